"""``fleet serve`` freezes its start-up heap out of the cyclic garbage collector (the device list's
p99 was a full collection walking it), in its own process only: a process that starts servers
in threads, as the tests do, keeps collecting as before."""

from __future__ import annotations

import gc
import subprocess
import sys


def test_the_start_up_heap_is_frozen_in_the_serving_process_only() -> None:
    code = (
        "import gc\n"
        "from fleet.server import freeze_startup_heap\n"
        "before = gc.get_freeze_count()\n"
        "freeze_startup_heap()\n"
        "print(before, gc.get_freeze_count())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    before, after = (int(n) for n in out.stdout.split())
    assert before == 0 and after > 10_000  # the modules, the app's imports: all of them
    import fleet.server  # noqa: F401 - importing it freezes nothing here

    assert gc.get_freeze_count() == 0
