"""Worked example: forecasting next year's sunspot number (statsmodels' yearly series) with an LSTM.

    python examples/sunspots_forecast.py [OUT_DIR] [--mode MODE] [--max-drop M=X]

Trains the model on data that ships inside a package (TensorFlow runs in a subprocess), then runs
``edgefleet convert`` on it, by default with ``--mode auto``: every mode is converted,
validated in the agent's runtimes and measured, and the smallest (then fastest) one inside the
accuracy budget is signed into OUT_DIR/sunspots-MODE.bundle, with the report printed and written
to OUT_DIR/sunspots-MODE.json. The training code is ``converter.examples.train_sunspots``.
"""

import sys

from converter.examples import worked_example

if __name__ == "__main__":
    sys.exit(worked_example("sunspots"))
