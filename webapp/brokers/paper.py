"""The paper broker: a simulated exchange behind the Broker interface, so paper mode is a setting and
never a second code path in the engine. Its orders live in Redis so every worker sees the same book.
Fills are immediate, at the last tick the listener stored (or the catalogue's reference price when no
tick has come), moved against the trader by the configured slippage."""
from __future__ import annotations

import re
import time
from decimal import Decimal

import redis

from webapp import clock, instruments, keys
from webapp.brokers.base import (
    BrokerAuthFailed,
    BrokerTimeout,
    BrokerUnavailable,
    Credentials,
    OrderRejected,
    OrderRequest,
    OrderState,
)

# Kite issues alphanumeric keys; paper mode checks the same shapes so a user's real credentials pass
# here and typos are caught before Kite is switched on.
_FIELD_RULES = {
    "api_key": (re.compile(r"^[A-Za-z0-9]{6,64}$"), "6–64 letters or digits"),
    "api_secret": (re.compile(r"^[A-Za-z0-9]{8,64}$"), "8–64 letters or digits"),
    "access_token": (re.compile(r"^[A-Za-z0-9]{8,64}$"), "8–64 letters or digits"),
}
ORDER_TTL_SECONDS = 3 * 24 * 3600
PAISE = Decimal("0.01")

# Faults an operator (or a test) can queue with RPUSH on keys.paper_faults(), one per placement.
# slow_after_accept holds the answer back SLOW_ANSWER_SECONDS after the order is booked: a window in which
# a drill (or a fault test) kills the worker between the broker's accept and the engine's records.
FAULTS = ("ok", "unavailable", "timeout", "timeout_after_accept", "slow_after_accept", "reject", "auth")
SLOW_ANSWER_SECONDS = 5.0


class PaperBroker:
    name = "paper"

    def __init__(self, conn: redis.Redis | None = None, account_id: int = 0, slippage_bps: Decimal = Decimal(0)):
        self.conn = conn
        self.account_id = account_id
        self.slippage = slippage_bps / Decimal(10000)

    def validate_credentials(self, credentials: Credentials) -> None:
        bad = [
            f"{field} must be {rule}"
            for field, (pattern, rule) in _FIELD_RULES.items()
            if not pattern.match(getattr(credentials, field) or "")
        ]
        if bad:
            raise BrokerAuthFailed("; ".join(bad))

    def last_price(self, exchange: str, symbol: str) -> Decimal:
        return self._price(exchange, symbol, self.conn.get(keys.last_price(exchange, symbol)))

    @staticmethod
    def _price(exchange: str, symbol: str, tick: bytes | None) -> Decimal:
        if tick is not None:
            return Decimal(tick.decode())
        instrument = instruments.lookup(exchange, symbol)
        if instrument is None:
            raise OrderRejected(f"{exchange}:{symbol} is not an instrument of the paper exchange")
        return instrument.last_price

    def place_order(self, order: OrderRequest) -> str:
        # One round trip for the fault script, the last tick and a new order number.
        pipe = self.conn.pipeline(transaction=False)
        pipe.lpop(keys.paper_faults())
        pipe.get(keys.last_price(order.exchange, order.symbol))
        pipe.incr(keys.paper_sequence())
        raw_fault, tick, sequence = pipe.execute()
        fault = (raw_fault or b"ok").decode()
        if fault == "unavailable":
            raise BrokerUnavailable("paper exchange: HTTP 503 (injected)")
        if fault == "timeout":
            raise BrokerTimeout("paper exchange: read timed out before the order was taken (injected)")
        if fault == "auth":
            raise BrokerAuthFailed("paper exchange: session expired (injected)")
        order_id = f"{clock.now():%y%m%d}{sequence:09d}"
        if fault == "reject":
            state = OrderState(order_id, "REJECTED", order.tag, 0, None,
                               "RMS:Margin Exceeds, Required:0, Available:0 (injected)")
        else:
            price = self._price(order.exchange, order.symbol, tick)
            moved = price * (1 + self.slippage) if order.side == "BUY" else price * (1 - self.slippage)
            state = OrderState(order_id, "COMPLETE", order.tag, order.quantity, moved.quantize(PAISE))
        self._store(order, state)
        if fault == "timeout_after_accept":
            raise BrokerTimeout("paper exchange: read timed out after the order was taken (injected)")
        if fault == "slow_after_accept":
            time.sleep(SLOW_ANSWER_SECONDS)
        return order_id

    def _store(self, order: OrderRequest, state: OrderState) -> None:
        fields = {
            "status": state.status, "tag": order.tag, "side": order.side, "quantity": order.quantity,
            "exchange": order.exchange, "symbol": order.symbol, "product": order.product,
            "filled_quantity": state.filled_quantity, "average_price": str(state.average_price or ""),
            "message": state.message or "", "account_id": self.account_id, "placed_at": clock.now().isoformat(),
        }
        pipe = self.conn.pipeline()
        pipe.hset(keys.paper_order(state.order_id), mapping=fields)
        pipe.expire(keys.paper_order(state.order_id), ORDER_TTL_SECONDS)
        pipe.rpush(keys.paper_tag(self.account_id, order.tag), state.order_id)
        pipe.expire(keys.paper_tag(self.account_id, order.tag), ORDER_TTL_SECONDS)
        pipe.execute()

    def order_status(self, order_id: str) -> OrderState:
        raw = {k.decode(): v.decode() for k, v in self.conn.hgetall(keys.paper_order(order_id)).items()}
        if not raw:
            raise OrderRejected(f"paper exchange has no order {order_id}")
        return OrderState(
            order_id=order_id,
            status=raw["status"],
            tag=raw["tag"],
            filled_quantity=int(raw["filled_quantity"]),
            average_price=Decimal(raw["average_price"]) if raw["average_price"] else None,
            message=raw["message"] or None,
        )

    def orders_by_tag(self, tag: str) -> list[OrderState]:
        ids = self.conn.lrange(keys.paper_tag(self.account_id, tag), 0, -1)
        return [self.order_status(order_id.decode()) for order_id in ids]
