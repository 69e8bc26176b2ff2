"""Graceful stop for the long-running processes: SIGTERM or Ctrl-C asks the main loop to finish the
work in hand and return, instead of dying mid-write."""
from __future__ import annotations

import signal


def stop_requested(flag: list[bool] | None = None) -> list[bool]:
    """A flag list that becomes truthy on SIGTERM or SIGINT; loops run `while not flag`. Given the flag
    again, it takes the signals back from a library that installed handlers of its own (RQ does)."""
    flag = [] if flag is None else flag

    def request_stop(_signum: int, _frame: object) -> None:
        flag.append(True)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return flag
