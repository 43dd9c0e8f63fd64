"""Worked example: classification of scikit-learn's 8x8 digits with a small CNN.

    python examples/digits_classification.py [OUT_DIR] [--mode MODE] [--max-drop M=X]

Trains the model on data that ships inside a package (TensorFlow runs in a subprocess), then runs
``edgefleet convert`` on it, by default with ``--mode auto``: every mode is converted,
validated in the agent's runtimes and measured, and the smallest (then fastest) one inside the
accuracy budget is signed into OUT_DIR/digits-MODE.bundle, with the report printed and written
to OUT_DIR/digits-MODE.json. The training code is ``converter.examples.train_digits``.
"""

import sys

from converter.examples import worked_example

if __name__ == "__main__":
    sys.exit(worked_example("digits"))
