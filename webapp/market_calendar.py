"""Exchange time: trading times are Asia/Kolkata wall-clock times; the trading-day and session rules live
here and nowhere else."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

IST = ZoneInfo("Asia/Kolkata")
HOLIDAYS_FILE = Path(__file__).parent / "data" / "nse_holidays.txt"
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


def parse_time(raw: str) -> time | None:
    """HH:MM or HH:MM:SS (24-hour) → time; anything else → None."""
    match = _TIME_RE.match(raw.strip()) if isinstance(raw, str) else None
    if not match:
        return None
    hh, mm, ss = match.groups()
    return time(int(hh), int(mm), int(ss or 0))


def format_time(value: time) -> str:
    return value.strftime("%H:%M:%S")


@dataclass(frozen=True)
class Session:
    opens: time
    closes: time
    mis_cutoff: bool = True  # whether the broker's intraday square-off (MIS_CUTOFF) applies

    def contains(self, value: time) -> bool:
        return self.opens <= value <= self.closes

    def describe(self) -> str:
        return f"{format_time(self.opens)}–{format_time(self.closes)} IST"


SESSIONS = {
    "nse": Session(time(9, 15), time(15, 30)),
    # For demos and tests outside market hours: the whole day, every day.
    "always": Session(time(0, 0), time(23, 59, 59), mis_cutoff=False),
}


def session_for(calendar: str) -> Session:
    return SESSIONS[calendar]


def last_order_time(product: str, calendar: str, mis_cutoff: time) -> time:
    """The last moment of a trading day an order of this product may be sent: MIS only until the broker's
    intraday square-off (KITE.md: equity 15:20; it refuses new MIS orders after it), anything else until
    the close."""
    session = session_for(calendar)
    return min(mis_cutoff, session.closes) if product == "MIS" and session.mis_cutoff else session.closes


@lru_cache(maxsize=1)
def nse_holidays() -> frozenset[date]:
    lines = (line.strip() for line in HOLIDAYS_FILE.read_text().splitlines())
    return frozenset(date.fromisoformat(line) for line in lines if line and not line.startswith("#"))


def is_trading_day(day: date, calendar: str) -> bool:
    if calendar == "always":
        return True
    return day.weekday() < 5 and day not in nse_holidays()


def next_trading_day(after: date, calendar: str) -> date:
    day = after + timedelta(days=1)
    while not is_trading_day(day, calendar):
        day += timedelta(days=1)
    return day


def exchange_date(moment: datetime) -> date:
    """The IST calendar date of an aware moment."""
    return moment.astimezone(IST).date()


def instant(day: date, at: time) -> datetime:
    """An IST wall-clock time on an IST date, as aware UTC."""
    return datetime.combine(day, at, tzinfo=IST).astimezone(timezone.utc)


def kite_token_expiry(issued: datetime) -> datetime:
    """Kite access tokens expire at 06:00 IST the morning after they are issued."""
    local = issued.astimezone(IST)
    expiry = datetime.combine(local.date(), time(6, 0), tzinfo=IST)
    if local >= expiry:
        expiry += timedelta(days=1)
    return expiry.astimezone(timezone.utc)
