"""The tests' bounded wait: the same ``wait_until`` the demo and the benchmarks use.

Tests poll with ``wait_until(check, what, timeout_s, interval_s)``; on timeout it raises
``WaitTimeoutError`` naming ``what`` and the last value ``check`` returned.
"""

from edgefleet.wait import WaitTimeoutError, wait_until

__all__ = ["WaitTimeoutError", "wait_until"]
