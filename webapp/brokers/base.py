"""The broker boundary: the engine and the web talk to brokers only through this interface, so paper
and Kite share every line above it."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

# The one definition of an order the broker has finished with: nothing more will fill.
FINAL_STATUSES = frozenset({"COMPLETE", "REJECTED", "CANCELLED"})
MARKET, LIMIT = "MARKET", "LIMIT"
ORDER_TYPES = (MARKET, LIMIT)


@dataclass(frozen=True)
class Credentials:
    api_key: str
    api_secret: str = field(repr=False)  # never in a log line or a traceback's locals
    access_token: str = field(repr=False)
    proxy: str | None = field(default=None, repr=False)  # the account's outbound proxy URL (may carry a password)


@dataclass(frozen=True)
class OrderRequest:
    exchange: str
    symbol: str
    side: str  # BUY | SELL
    quantity: int
    product: str  # MIS | CNC
    tag: str  # ≤ 20 alphanumeric characters, derived from the event_id
    market_protection: float = -1  # Kite refuses a MARKET order without it since 2026; -1 = Kite's automatic
    algo_id: str | None = None  # SEBI's retail algo framework: the id every algo order carries
    order_type: str = MARKET  # MARKET | LIMIT
    price: Decimal | None = None  # LIMIT only: the limit price, on the instrument's tick


@dataclass(frozen=True)
class OrderState:
    order_id: str
    status: str  # Kite's statuses: COMPLETE, REJECTED, CANCELLED, OPEN, ...
    tag: str | None = None
    filled_quantity: int = 0
    average_price: Decimal | None = None
    message: str | None = None
    order_type: str | None = None  # MARKET | LIMIT (Kite's order_type), None when the answer did not say

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict:
        return {"order_id": self.order_id, "status": self.status, "tag": self.tag,
                "filled_quantity": self.filled_quantity, "message": self.message,
                "average_price": str(self.average_price) if self.average_price is not None else None,
                "order_type": self.order_type}

    @classmethod
    def from_dict(cls, data: dict) -> OrderState:
        average = data.get("average_price")
        return cls(str(data["order_id"]), str(data["status"]), data.get("tag"), int(data.get("filled_quantity") or 0),
                   Decimal(str(average)) if average not in (None, "") else None, data.get("message"),
                   data.get("order_type") or None)


class BrokerError(Exception):
    """Base of every broker failure; `code` is what the UI and the JSON API show."""

    code = "BROKER_ERROR"


class BrokerAuthFailed(BrokerError):
    """Credentials refused or session expired: retrying will not help, a human must log in."""

    code = "BROKER_AUTH_FAILED"


class BrokerUnavailable(BrokerError):
    """The request surely did not land (no connection, HTTP 429, the rate limiter's wait too long), or a
    follow-up call failed: safe to ask again."""

    code = "BROKER_UNAVAILABLE"


class BrokerTimeout(BrokerUnavailable):
    """A placement with no usable answer (timeout, reset, HTTP 5xx, an unreadable body): the broker may or
    may not have the order. Look it up by tag before placing again."""

    code = "BROKER_TIMEOUT"


class OrderRejected(BrokerError):
    """The broker said no for a reason that will not change on retry (margin, invalid symbol, ...)."""

    code = "ORDER_REJECTED"


class OrderNotModifiable(BrokerError):
    """The broker refused a modification (Kite: an InputException such as "Order cannot be modified as it is
    complete"): most often the order is already final, filled or cancelled meanwhile. Read its state: never
    a reason to place another order."""

    code = "ORDER_NOT_MODIFIABLE"


class OrderNotCancellable(BrokerError):
    """The broker refused a cancellation (Kite: an InputException such as "Order cannot be cancelled as it is
    complete"): most often the order is already final. Read its state."""

    code = "ORDER_NOT_CANCELLABLE"


class Broker(Protocol):
    name: str

    def validate_credentials(self, credentials: Credentials) -> None:
        """Raise BrokerAuthFailed (with a message a person can act on) unless the broker accepts them."""

    def place_order(self, order: OrderRequest) -> str:
        """A MARKET order (with its market protection) or a LIMIT order at order.price; returns the broker's
        order id. Accepted is not filled: see order_status."""

    def modify_to_market(self, order_id: str, market_protection: float) -> None:
        """Turns a working order (a LIMIT left unfilled) into a MARKET order with this market protection: what
        filled stays filled, the rest fills at market. A follow-up call: a failure is BrokerUnavailable (ask
        again, it is idempotent), a refusal OrderNotModifiable (read the order's state: it is likely final)."""

    def cancel_order(self, order_id: str) -> None:
        """Cancels a working order (Kite: cancel_order(variety="regular", order_id), DELETE
        /orders/regular/{order_id}): what filled stays filled, the rest is cancelled. Accepted is not final:
        read the order's state. A follow-up call: a failure is BrokerUnavailable (ask again), a refusal
        OrderNotCancellable (read the order's state: it is likely final)."""

    def order_status(self, order_id: str) -> OrderState:
        """The order's latest state (a follow-up call: any failure here is BrokerUnavailable, never a "no")."""

    def orders_by_tag(self, tag: str) -> list[OrderState]:
        """Today's orders carrying this tag: how a timed-out placement is found."""

    def last_price(self, exchange: str, symbol: str) -> Decimal: ...

    def quotes(self, names: list[str]) -> dict[str, Decimal]:
        """Last prices of instruments named "EXCHANGE:SYMBOL" (Kite's ltp), under the quote limit; an
        instrument the broker does not price is left out."""

    def net_quantity(self, exchange: str, symbol: str, product: str) -> int:
        """The account's net position in this instrument and product today, as the broker holds it (a
        follow-up call: a failure is BrokerUnavailable). How a position the broker squared off itself, at
        the MIS cut-off, is known to be closed."""
