"""The lateness rule, in one place. Time triggers (BUY, SELL) never act before their instant. A BUY more
than MISSED_ENTRY_GRACE_SECONDS after its instant is never placed, first attempt included: entering late
is a trade the user did not ask for. Exits (STOPLOSS, STOP, KILL) never wait for a clock, and a SELL is
never too late while it has a position to close, but no order of any kind is sent while its market is
shut: before the open, after the close, on a holiday, and for MIS after the broker's intraday cut-off
(MIS_CUTOFF), when Kite squares MIS positions off itself and refuses new MIS orders."""
from __future__ import annotations

import time
from datetime import datetime

from webapp import clock
from webapp.engine.events import BUY, SELL, Event
from webapp.market_calendar import (
    IST,
    format_time,
    is_trading_day,
    last_order_time,
    parse_time,
    session_for,
)

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


def market_shut(product: str, calendar: str, mis_cutoff: str, now: datetime | None = None) -> str | None:
    """Why no order of this product may be sent now, or None when one may."""
    local = (now or clock.now()).astimezone(IST)
    session = session_for(calendar)
    last = last_order_time(product, calendar, parse_time(mis_cutoff))
    if not is_trading_day(local.date(), calendar):
        return f"the market is closed today ({local:%a %d %b})"
    if local.time() < session.opens:
        return f"the market opens at {format_time(session.opens)} IST"
    if local.time() >= last:
        if product == "MIS" and last < session.closes:
            return (f"past the MIS cut-off {format_time(last)} IST: the broker squares MIS positions off itself "
                    f"and refuses new MIS orders")
        return f"the market closed at {format_time(last)} IST"
    return None
