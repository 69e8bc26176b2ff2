"""The system's one clock. Every process reads time here, so a demo or a test can shift the whole
system's notion of "now" consistently (CLOCK_OFFSET_SECONDS) instead of waiting for a wall-clock time.

CLOCK_OFFSET_FILE (optional) names a file holding the offset in seconds (a float). When it is set, a daemon
thread rereads the file every FILE_POLL_SECONDS and replaces the offset. Why a file: a recurring deployment
runs on several days, and a test must move every process of the system (web, worker, scheduler, listener)
from one simulated day to the next, together and without restarting them; CLOCK_OFFSET_SECONDS is read
once at import. A file is what any number of processes can watch with no connection of their own and no
new dependency. The processes agree within one poll (~50 ms), which is why tests move the clock to a few
seconds before an instant, never onto it. Move it forwards only: Redis lock TTLs and the processes' sleeps
run on the real clock, and a clock going back would re-open instants already acted on.

now() stays as cheap as before: one read of a module global the follower thread replaces whole.
Production leaves CLOCK_OFFSET_FILE unset; then no thread is started."""
from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

OFFSET = timedelta(seconds=float(os.environ.get("CLOCK_OFFSET_SECONDS", "0")))
FILE_POLL_SECONDS = 0.05

log = logging.getLogger("clock")
_following: threading.Event | None = None  # set to stop the current follower
_guard = threading.Lock()


def now() -> datetime:
    """Aware UTC."""
    return datetime.now(timezone.utc) + OFFSET


def epoch() -> float:
    return now().timestamp()


def _read(path: Path) -> timedelta | None:
    """The file's offset; None while it is missing or half-written (the last offset stays)."""
    try:
        return timedelta(seconds=float(path.read_text().strip()))
    except (OSError, ValueError, OverflowError):
        return None


def _follow(path: Path, done: threading.Event) -> None:
    global OFFSET
    while not done.wait(FILE_POLL_SECONDS):
        offset = _read(path)
        if offset is not None and offset != OFFSET:
            with _guard:  # never after unfollow() has set its own offset
                if not done.is_set():
                    OFFSET = offset


def follow(path: str | os.PathLike[str]) -> None:
    """Take the offset from this file from now on: read at once (so the very next now() has it), then every
    FILE_POLL_SECONDS on a daemon thread. A second call replaces the file followed."""
    global OFFSET, _following
    path = Path(path)
    with _guard:
        if _following is not None:
            _following.set()
        offset = _read(path)
        if offset is not None:
            OFFSET = offset
        _following = threading.Event()
        threading.Thread(target=_follow, args=(path, _following), name="clock-offset-file", daemon=True).start()


def unfollow(offset: timedelta | None = None) -> None:
    """Stop following the file; the offset becomes `offset` if given (else the last one read stays)."""
    global OFFSET, _following
    with _guard:
        if _following is not None:
            _following.set()
            _following = None
        if offset is not None:
            OFFSET = offset


if os.environ.get("CLOCK_OFFSET_FILE"):
    follow(os.environ["CLOCK_OFFSET_FILE"])
