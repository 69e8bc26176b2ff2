"""The lateness rule, in one place. Time triggers (BUY, SELL) never act before their instant. A BUY more
than MISSED_ENTRY_GRACE_SECONDS after its instant is never placed, first attempt included: entering late
is a trade the user did not ask for. Exits (STOPLOSS, STOP, KILL) never wait for a clock, and a SELL is
never too late while it has a position to close."""
from __future__ import annotations

import time
from datetime import datetime

from webapp import clock
from webapp.engine.events import BUY, SELL, Event

TIMED = frozenset({BUY, SELL})


def wait_until_due(events: list[Event]) -> None:
    """Belt and braces: the scheduler moves triggers at their second, never before."""
    instants = [e.instant for e in events if e.event in TIMED]
    early = (max(instants) - clock.now()).total_seconds() if instants else 0
    if early > 0:
        time.sleep(early)


def missed_entry(event: Event, grace_seconds: float, now: datetime | None = None) -> str | None:
    """Why this BUY must not be placed now, or None when it may."""
    if event.event != BUY:
        return None
    late = ((now or clock.now()) - event.instant).total_seconds()
    if late <= grace_seconds:
        return None
    return f"missed entry: the BUY was not placed within {grace_seconds:.0f} s of the buy time"
