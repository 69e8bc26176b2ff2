"""Events (DESIGN.md section 4): one per trigger, with an id that makes a second delivery recognisable,
and the broker order tag derived from it. Both carry the run (runs.id), not the day: a second START on the
same day is a new run whose events nothing of the first run can match."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from webapp import clock

BUY, SELL, STOPLOSS, TARGET, STOP, KILL, FAIL = "BUY", "SELL", "STOPLOSS", "TARGET", "STOP", "KILL", "FAIL"
# Exits outrank entries: every worker drains `stoploss` before `orders`.
QUEUE_FOR = {BUY: "orders", SELL: "orders", STOPLOSS: "stoploss", TARGET: "stoploss", STOP: "stoploss",
             KILL: "stoploss", FAIL: "stoploss"}
QUEUES = ("stoploss", "orders")
_TAG_CODE = {BUY: "B", SELL: "S", STOPLOSS: "L", TARGET: "T", STOP: "X", KILL: "K", FAIL: "F"}
EXITS = frozenset({SELL, STOPLOSS, TARGET, STOP, KILL})  # events that square a position off


def event_id(kind: str, strategy_id: int, run_id: int) -> str:
    return f"{strategy_id}:{kind}:{run_id}"


def order_tag(event_id_: str) -> str:
    """Kite's tag: alphanumeric, at most 20 characters. The letter between the strategy and the run keeps
    strategy 12's tags apart from strategy 1's."""
    strategy_id, kind, run = event_id_.split(":")
    tag = f"{strategy_id}{_TAG_CODE[kind]}{run}"
    if len(tag) > 20 or not tag.isalnum():
        raise ValueError(f"cannot derive a Kite tag from {event_id_!r}")
    return tag


@dataclass(frozen=True)
class Event:
    event: str
    strategy_id: int
    event_id: str
    timestamp: str  # ISO UTC: the instant the trigger is for (never acted on before it)
    price: str | None = None  # STOPLOSS, TARGET: the crossing tick
    reason: str | None = None  # FAIL: why the strategy cannot go on (e.g. "symbol unavailable")

    @classmethod
    def for_run(cls, kind: str, strategy_id: int, run_id: int, at: datetime | None = None,
                price: str | None = None, reason: str | None = None) -> Event:
        return cls(kind, strategy_id, event_id(kind, strategy_id, run_id), (at or clock.now()).isoformat(),
                   price, reason)

    @classmethod
    def from_dict(cls, data: dict) -> Event:
        return cls(data["event"], int(data["strategy_id"]), data["event_id"], data["timestamp"], data.get("price"),
                   data.get("reason"))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def instant(self) -> datetime:
        return datetime.fromisoformat(self.timestamp)

    @property
    def run_id(self) -> int:
        return int(self.event_id.rsplit(":", 1)[1])

    @property
    def tag(self) -> str:
        return order_tag(self.event_id)

    @property
    def queue(self) -> str:
        return QUEUE_FOR[self.event]
