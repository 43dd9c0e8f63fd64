"""Worked example: a scikit-learn Pipeline (StandardScaler + MLPRegressor) on the diabetes data,
saved with joblib.

    python examples/sklearn_pipeline_regression.py [OUT_DIR] [--mode MODE] [--max-drop M=X]

Needs the converter's scikit-learn extra (`pip install 'edgefleet[converter-sklearn]'` and
`pip install --no-deps tf-keras==2.21.0`). Trains the model (scikit-learn, seconds), then runs
``edgefleet convert`` on it, by default with ``--mode auto``, into OUT_DIR/diabetes-pipeline-MODE.bundle, with
the report printed and written to OUT_DIR/diabetes-pipeline-MODE.json. The training code is
``converter.examples_foreign.train``.
"""

import sys

from converter.examples_foreign import worked_example

if __name__ == "__main__":
    sys.exit(worked_example("diabetes-pipeline"))
