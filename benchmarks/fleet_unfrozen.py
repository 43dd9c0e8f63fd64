"""``python -m fleet`` with the start-up heap left to the garbage collector (``gc.freeze`` a no-op):
the "before" server that ``benchmarks.fleet --only api`` runs beside the real one, so that what
``fleet.server.freeze_startup_heap`` saves is measured side by side, not across two runs."""

from __future__ import annotations

import gc
import sys

from fleet.__main__ import main

if __name__ == "__main__":
    gc.freeze = lambda: None
    sys.exit(main())
