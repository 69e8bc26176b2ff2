"""The system's one clock. Every process reads time here, so a demo or a test can shift the whole
system's notion of "now" consistently (CLOCK_OFFSET_SECONDS) instead of waiting for a wall-clock time."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

OFFSET = timedelta(seconds=float(os.environ.get("CLOCK_OFFSET_SECONDS", "0")))


def now() -> datetime:
    """Aware UTC."""
    return datetime.now(timezone.utc) + OFFSET


def epoch() -> float:
    return now().timestamp()
