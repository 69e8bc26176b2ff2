"""The exit rules of one traded instrument, in one place: which side enters and which exits, where the
stop-loss and the target sit once the entry has filled, and how a trailing stop moves. The engine resolves
the levels from the real fill price; the listener moves the stop at tick speed with the same functions.

Everything is in price points once resolved: a percent is taken of the entry fill. A stop only ever
tightens (moves towards the price), never back."""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

LONG, SHORT = "long", "short"
DIRECTIONS = (LONG, SHORT)
PRICE, PERCENT, POINTS = "price", "percent", "points"
STOP_TYPES = (PRICE, PERCENT, POINTS)
TRAIL_UNITS = (POINTS, PERCENT)
PAISE = Decimal("0.01")


class Terms(Protocol):
    """A strategy today (webapp.models.TradeTerms); a leg of several later."""
    direction: str
    stop_loss_type: str
    stop_loss: Decimal
    target_type: str | None
    target: Decimal | None
    trail_unit: str | None
    trail_every: Decimal | None
    trail_by: Decimal | None
    breakeven_at: Decimal | None


def entry_side(direction: str) -> str:
    return "SELL" if direction == SHORT else "BUY"


def exit_side(direction: str) -> str:
    return "BUY" if direction == SHORT else "SELL"


def sign(direction: str) -> int:
    """+1 when a rising price is in the trader's favour."""
    return -1 if direction == SHORT else 1


def _points(kind: str, value: Decimal, entry: Decimal) -> Decimal:
    return entry * value / 100 if kind == PERCENT else value


def _paise(value: Decimal) -> Decimal:
    return value.quantize(PAISE, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Levels:
    """A run's exits resolved at its entry fill, in prices and points."""
    direction: str
    entry: Decimal
    stop: Decimal
    target: Decimal | None
    trail_every: Decimal | None  # points in favour per move
    trail_by: Decimal | None  # points the stop moves each time
    breakeven_at: Decimal | None  # points in favour at which the stop goes to the entry price

    def to_fields(self) -> dict[str, str]:
        """For the runtime hash the listener reads ('' where not set)."""
        return {name: "" if value is None else str(value) for name, value in (
            ("direction", self.direction), ("stop_price", self.stop), ("target_price", self.target),
            ("trail_every", self.trail_every), ("trail_by", self.trail_by), ("breakeven_at", self.breakeven_at))}


def stop_level(terms: Terms, entry: Decimal) -> Decimal:
    if terms.stop_loss_type == PRICE:
        return terms.stop_loss
    return _paise(entry - sign(terms.direction) * _points(terms.stop_loss_type, terms.stop_loss, entry))


def target_level(terms: Terms, entry: Decimal) -> Decimal | None:
    if not terms.target_type or terms.target is None:
        return None
    if terms.target_type == PRICE:
        return terms.target
    return _paise(entry + sign(terms.direction) * _points(terms.target_type, terms.target, entry))


def resolve(terms: Terms, entry: Decimal) -> Levels:
    unit = terms.trail_unit or POINTS

    def trail(value: Decimal | None) -> Decimal | None:
        return None if value is None else _paise(_points(unit, value, entry))

    trailing = terms.trail_every is not None and terms.trail_by is not None
    return Levels(terms.direction, entry, stop_level(terms, entry), target_level(terms, entry),
                  trail(terms.trail_every) if trailing else None, trail(terms.trail_by) if trailing else None,
                  trail(terms.breakeven_at))


# --- the listener's side, in floats: these run on every tick


def tighter(direction: str, a: float, b: float) -> float:
    """The stop nearer the price: higher for a long, lower for a short."""
    return max(a, b) if direction != SHORT else min(a, b)


def moved_stop(direction: str, entry: float, initial: float, current: float, best: float,
               trail_every: float | None, trail_by: float | None, breakeven_at: float | None) -> float:
    """The stop once the price has reached `best` (the furthest in the trader's favour since entry): for
    every trail_every in favour the initial stop moves trail_by; at breakeven_at in favour, at least cost."""
    s = sign(direction)
    favour = (best - entry) * s
    stop = current
    if trail_every and trail_by and favour >= trail_every:
        stop = tighter(direction, stop, initial + s * math.floor(favour / trail_every + 1e-9) * trail_by)
    if breakeven_at is not None and favour >= breakeven_at:
        stop = tighter(direction, stop, entry)
    return stop


def next_move_at(direction: str, entry: float, current: float, best: float, trail_every: float | None,
                 trail_by: float | None, breakeven_at: float | None) -> float | None:
    """The price at which the stop next moves (the nearest in the trader's favour), or None: it never will."""
    s = sign(direction)
    favour = (best - entry) * s
    candidates = []
    if trail_every and trail_by:
        candidates.append(entry + s * (math.floor(favour / trail_every + 1e-9) + 1) * trail_every)
    if breakeven_at is not None and favour < breakeven_at and tighter(direction, current, entry) != current:
        candidates.append(entry + s * breakeven_at)
    if not candidates:
        return None
    return min(candidates) if s > 0 else max(candidates)


def stop_hit(direction: str, price: float, stop: float) -> bool:
    return price <= stop if direction != SHORT else price >= stop


def target_hit(direction: str, price: float, target: float) -> bool:
    return price >= target if direction != SHORT else price <= target
