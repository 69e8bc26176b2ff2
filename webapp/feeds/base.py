"""The market-data boundary: the listener sees ticks and subscriptions, never a particular feed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True)
class Instrument:
    exchange: str
    symbol: str
    token: int  # the broker's instrument_token

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"


@dataclass(frozen=True)
class Tick:
    instrument: Instrument
    price: float  # rupees


TickHandler = Callable[[list[Tick]], None]


class MarketFeed(Protocol):
    idle: bool  # nothing can tick (a Kite feed without a session): the listener prices held instruments by quotes

    def start(self, on_ticks: TickHandler) -> None:
        """Begin delivering ticks, on a thread of the feed's own; returns at once."""

    def subscribe(self, instruments: list[Instrument]) -> list[Instrument]:
        """Returns the instruments the feed does not know (they will never tick)."""

    def unsubscribe(self, instruments: list[Instrument]) -> None: ...

    def stop(self) -> None: ...
