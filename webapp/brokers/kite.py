"""Zerodha Kite Connect through the official `kiteconnect` client, behind the Broker interface.

Every failure is sorted by what it means for money: the broker said no for good (OrderRejected), the
session is gone (BrokerAuthFailed: a human must log in again), the request surely did not land
(BrokerUnavailable: retry), or it may have landed (BrokerTimeout: look the tag up before anything else)."""
from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

import redis
import requests
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from webapp.brokers.base import (
    LIMIT,
    BrokerAuthFailed,
    BrokerTimeout,
    BrokerUnavailable,
    Credentials,
    OrderNotCancellable,
    OrderNotModifiable,
    OrderRejected,
    OrderRequest,
    OrderState,
)
from webapp.brokers.ratelimit import RateLimiter

T = TypeVar("T")
PAISE = Decimal("0.01")
LTP_BATCH = 1000  # instruments Kite's ltp answers in one call


class KiteBroker:
    name = "kite"

    def __init__(self, root: str, credentials: Credentials, limiter: RateLimiter | None = None,
                 timeout: float = 7.0) -> None:
        self.credentials = credentials
        self.limiter = limiter
        # The account's own outbound proxy (its registered static IP: Kite takes orders only from it) for every
        # REST call of this client, and for nothing else in the app. An unreachable proxy is requests'
        # ProxyError, a ConnectionError: mapped in _call as any lost connection is.
        proxies = {"http": credentials.proxy, "https": credentials.proxy} if credentials.proxy else None
        self.client = KiteConnect(credentials.api_key, access_token=credentials.access_token or None, root=root,
                                  timeout=timeout, proxies=proxies)

    def _call(self, kind: str, fn: Callable[[], T], placement: bool = False) -> T:
        """One REST call, after its turn under the rate limits; errors mapped to the Broker's by what they
        mean for money. On a placement, any answer that does not say "no" for certain may hide an order
        (BrokerTimeout: look the tag up). On a follow-up call nothing is a "no": BrokerUnavailable."""
        if self.limiter is not None:
            try:
                self.limiter.acquire(self.credentials.api_key, kind)
            except (TimeoutError, redis.RedisError) as exc:  # nothing was sent
                raise BrokerUnavailable(f"rate limiter: {exc}") from exc
        ambiguous = BrokerTimeout if placement else BrokerUnavailable
        try:
            return fn()
        except kite_errors.TokenException as exc:
            raise BrokerAuthFailed(f"Kite session expired or invalid: {exc}") from exc
        except requests.ConnectTimeout as exc:  # no connection was ever made
            raise BrokerUnavailable(f"Kite unreachable: {exc}") from exc
        except (requests.Timeout, requests.ConnectionError) as exc:  # ProxyError too: it may have been relayed
            raise ambiguous(f"no answer from Kite: {exc}") from exc
        except (kite_errors.DataException, TypeError, KeyError) as exc:
            # An answer we cannot read (a gateway page, an error without error_type, no Content-Type).
            raise ambiguous(f"unreadable answer from Kite: {exc!r}") from exc
        except kite_errors.KiteException as exc:
            if exc.code == 429 or not placement:
                raise BrokerUnavailable(f"Kite: {exc} (HTTP {exc.code})") from exc
            if exc.code >= 500:  # a server error says nothing about whether the order landed
                raise BrokerTimeout(f"Kite answered HTTP {exc.code}: {exc}") from exc
            # InputException, MarginException (as GeneralException), PermissionException: a real "no".
            raise OrderRejected(str(exc)) from exc

    def validate_credentials(self, credentials: Credentials) -> None:
        try:
            self._call("other", self.client.profile)
        except BrokerUnavailable as exc:
            raise BrokerAuthFailed(f"Kite did not accept these credentials: {exc}") from exc

    def create_session(self, request_token: str) -> str:
        """The login flow's last step: Kite's request_token → an access token (checksum made by the client)."""
        try:
            data = self._call("other", lambda: self.client.generate_session(request_token, self.credentials.api_secret))
        except BrokerUnavailable as exc:
            raise BrokerAuthFailed(f"Kite did not complete the login: {exc}") from exc
        return str(data["access_token"])

    def place_order(self, order: OrderRequest) -> str:
        limit = order.order_type == LIMIT
        data = self._call("orders", lambda: self.client.place_order(
            variety=KiteConnect.VARIETY_REGULAR, exchange=order.exchange, tradingsymbol=order.symbol,
            transaction_type=order.side, quantity=int(order.quantity), product=order.product,
            order_type=KiteConnect.ORDER_TYPE_LIMIT if limit else KiteConnect.ORDER_TYPE_MARKET,
            price=float(order.price) if limit else None, tag=order.tag,
            # Market protection is Kite's rule for MARKET (and SL-M) orders; a LIMIT carries its own price.
            market_protection=None if limit else _protection(order.market_protection),
            algo_id=order.algo_id), placement=True)
        return str(data["order_id"] if isinstance(data, dict) else data)

    def modify_to_market(self, order_id: str, market_protection: float) -> None:
        """PUT /orders/regular/{order_id} with order_type MARKET and market_protection (kiteconnect 5.2.2's
        modify_order drops None, so nothing else changes). A follow-up call: a failure is BrokerUnavailable; an
        InputException (Kite's answer for an order already COMPLETE, CANCELLED or REJECTED) is
        OrderNotModifiable."""
        def modify() -> object:
            try:
                return self.client.modify_order(variety=KiteConnect.VARIETY_REGULAR, order_id=order_id,
                                                order_type=KiteConnect.ORDER_TYPE_MARKET,
                                                market_protection=_protection(market_protection))
            except kite_errors.InputException as exc:
                raise OrderNotModifiable(f"Kite: {exc}") from exc
        self._call("other", modify)

    def cancel_order(self, order_id: str) -> None:
        """DELETE /orders/regular/{order_id} (kiteconnect's cancel_order; Kite answers {"order_id": ...} and
        cancels asynchronously: read the state). A follow-up call: a failure is BrokerUnavailable; an
        InputException (Kite's answer for an order already COMPLETE, CANCELLED or REJECTED) is
        OrderNotCancellable."""
        def cancel() -> object:
            try:
                return self.client.cancel_order(variety=KiteConnect.VARIETY_REGULAR, order_id=order_id)
            except kite_errors.InputException as exc:
                raise OrderNotCancellable(f"Kite: {exc}") from exc
        self._call("other", cancel)

    def order_status(self, order_id: str) -> OrderState:
        history = self._call("other", lambda: self.client.order_history(order_id))
        if not history:
            raise BrokerUnavailable(f"Kite has no history for order {order_id} yet")
        return order_state(history[-1])

    def orders_by_tag(self, tag: str) -> list[OrderState]:
        return [order_state(order) for order in self._call("other", self.client.orders) if tag in _tags(order)]

    def instruments(self, exchange: str) -> list[dict]:
        return self._call("other", lambda: self.client.instruments(exchange))

    def last_price(self, exchange: str, symbol: str) -> Decimal:
        name = f"{exchange}:{symbol}"
        quotes = self._call("quote", lambda: self.client.ltp([name]))
        if name not in quotes:
            raise BrokerUnavailable(f"Kite has no price for {name}")
        return Decimal(str(quotes[name]["last_price"])).quantize(PAISE)

    def quotes(self, names: list[str]) -> dict[str, Decimal]:
        """Last prices of many instruments ("NSE:INFY"), LTP_BATCH a call, each call taking its turn under
        the quote limit. An instrument Kite does not price is left out."""
        prices: dict[str, Decimal] = {}
        for start in range(0, len(names), LTP_BATCH):
            chunk = names[start:start + LTP_BATCH]
            answer = self._call("quote", lambda: self.client.ltp(chunk))
            prices.update({name: Decimal(str(answer[name]["last_price"])).quantize(PAISE)
                           for name in chunk if name in answer and answer[name].get("last_price") is not None})
        return prices


    def net_quantity(self, exchange: str, symbol: str, product: str) -> int:
        net = self._call("other", lambda: self.client.positions())["net"]
        return sum(int(p["quantity"]) for p in net
                   if (p["exchange"], p["tradingsymbol"], p["product"]) == (exchange, symbol, product))


def _protection(value: float) -> float | int:
    """As Kite documents it: -1, or a percentage (a whole one sent as an integer)."""
    return int(value) if float(value).is_integer() else value


def _tags(order: dict) -> list[str]:
    tags = order.get("tags") or []
    return [*tags, order["tag"]] if order.get("tag") else list(tags)


def order_state(order: dict) -> OrderState:
    """Kite's order (an order_history entry, an orders() row, a postback, a ticker order frame) as ours.
    Kite's "UPDATE" (a partial fill or a modification) is not final."""
    average = order.get("average_price")
    return OrderState(
        order_id=str(order["order_id"]),
        status=str(order.get("status") or "UNKNOWN").upper(),
        tag=order.get("tag"),
        filled_quantity=int(order.get("filled_quantity") or 0),
        average_price=Decimal(str(average)).quantize(PAISE) if average else None,
        message=order.get("status_message") or None,
        order_type=str(order["order_type"]).upper() if order.get("order_type") else None,
    )
