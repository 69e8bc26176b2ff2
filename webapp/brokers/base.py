"""The broker boundary: the engine and the web talk to brokers only through this interface, so paper
and Kite share every line above it."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

FINAL_STATUSES = frozenset({"COMPLETE", "REJECTED", "CANCELLED"})


@dataclass(frozen=True)
class Credentials:
    api_key: str
    api_secret: str
    access_token: str


@dataclass(frozen=True)
class OrderRequest:
    exchange: str
    symbol: str
    side: str  # BUY | SELL
    quantity: int
    product: str  # MIS | CNC
    tag: str  # ≤ 20 alphanumeric characters, derived from the event_id


@dataclass(frozen=True)
class OrderState:
    order_id: str
    status: str  # Kite's statuses: COMPLETE, REJECTED, CANCELLED, OPEN, ...
    tag: str | None = None
    filled_quantity: int = 0
    average_price: Decimal | None = None
    message: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


class BrokerError(Exception):
    """Base of every broker failure; `code` is what the UI and the JSON API show."""

    code = "BROKER_ERROR"


class BrokerAuthFailed(BrokerError):
    """Credentials refused or session expired: retrying will not help, a human must log in."""

    code = "BROKER_AUTH_FAILED"


class BrokerUnavailable(BrokerError):
    """Network error, HTTP 429 or 5xx before the broker took the request: safe to retry."""

    code = "BROKER_UNAVAILABLE"


class BrokerTimeout(BrokerUnavailable):
    """No answer in time: the broker may or may not have the order. Look it up by tag before retrying."""

    code = "BROKER_TIMEOUT"


class OrderRejected(BrokerError):
    """The broker said no for a reason that will not change on retry (margin, invalid symbol, ...)."""

    code = "ORDER_REJECTED"


class Broker(Protocol):
    name: str

    def validate_credentials(self, credentials: Credentials) -> None:
        """Raise BrokerAuthFailed (with a message a person can act on) unless the broker accepts them."""

    def place_order(self, order: OrderRequest) -> str:
        """A MARKET order; returns the broker's order id. Accepted is not filled: see order_status."""

    def order_status(self, order_id: str) -> OrderState: ...

    def orders_by_tag(self, tag: str) -> list[OrderState]:
        """Today's orders carrying this tag: how a timed-out placement is found."""

    def last_price(self, exchange: str, symbol: str) -> Decimal: ...
