"""Worked example: regression of scikit-learn's diabetes progression with an MLP.

    python examples/diabetes_regression.py [OUT_DIR] [--mode MODE] [--max-drop M=X]

Trains the model on data that ships inside a package (TensorFlow runs in a subprocess), then runs
``edgefleet convert`` on it, by default with ``--mode auto``: every mode is converted,
validated in the agent's runtimes and measured, and the smallest (then fastest) one inside the
accuracy budget is signed into OUT_DIR/diabetes-MODE.bundle, with the report printed and written
to OUT_DIR/diabetes-MODE.json. The training code is ``converter.examples.train_diabetes``.
"""

import sys

from converter.examples import worked_example

if __name__ == "__main__":
    sys.exit(worked_example("diabetes"))
