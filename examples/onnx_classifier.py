"""Worked example: the breast-cancer gradient-boosting classifier exported to ONNX with skl2onnx.

    python examples/onnx_classifier.py [OUT_DIR] [--mode MODE] [--max-drop M=X]

Needs the converter's scikit-learn extra (`pip install 'edgefleet[converter-sklearn]'` and
`pip install --no-deps tf-keras==2.21.0`). Trains the model (scikit-learn, seconds), then runs
``edgefleet convert`` on it, by default with ``--mode auto``, into OUT_DIR/cancer-onnx-MODE.bundle, with
the report printed and written to OUT_DIR/cancer-onnx-MODE.json. The training code is
``converter.examples_foreign.train``.
"""

import sys

from converter.examples_foreign import worked_example

if __name__ == "__main__":
    sys.exit(worked_example("cancer-onnx"))
