"""``python -m converter keys|convert ...``: the converter's commands without the other parts."""

import sys

from converter.cli import main

sys.exit(main())
