"""FakeKite: the state (accounts, instruments, orders), the REST routes, and the control API for tests."""
from __future__ import annotations

import hashlib
import heapq
import html
import itertools
import random
import re
import secrets
import string
import threading
import time
import traceback
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tests.fake_kite.instruments import DEFAULT_INSTRUMENTS, Instrument, MarketData, render_csv
from tests.fake_kite.rest import CSV, PostbackSender, Request, Response, RestServer, error, ok
from tests.fake_kite.ticker import TickerConnection, TickerServer, wait

IST = timezone(timedelta(hours=5, minutes=30))

# Kite's HTTP code for each error type, and the default error type/message for an injected HTTP code.
ERROR_STATUS = {"TokenException": 403, "PermissionException": 403, "UserException": 403, "InputException": 400,
                "OrderException": 500, "MarginException": 400, "HoldingException": 400, "NetworkException": 503,
                "DataException": 502, "GeneralException": 500}
DEFAULT_FAULTS = {
    400: ("InputException", "Invalid input"),
    403: ("TokenException", "Incorrect `api_key` or `access_token`."),
    404: ("GeneralException", "Route not found"),
    429: ("NetworkException", "Too many requests"),
    500: ("GeneralException", "Something went wrong"),
    502: ("DataException", "Unable to reach the OMS"),
    503: ("NetworkException", "Gateway timed out"),
    504: ("NetworkException", "Gateway timed out"),
}
TOKEN_MESSAGE = "Incorrect `api_key` or `access_token`."
RMS_MESSAGE = ("RMS:Margin Exceeds,Required:15205.00, Available:1000.00 for entity account-{user_id} across "
               "exchange across segment across product ")
# Kite's answer, since 2026, to a MARKET or SL-M order placed through the API without market protection.
MARKET_PROTECTION_REQUIRED = ("Market orders without market protection are not allowed via API. Please set market "
                              "protection or use a Limit order.")
# What the exchange says when it cancels what a protected MARKET (or IOC) order could not fill.
PARTIAL_CANCEL_MESSAGE = ("The order was cancelled by the exchange because the remaining quantity could not be "
                          "filled within the market protection range.")

VARIETIES = ("regular", "amo", "co", "iceberg", "auction")
ORDER_TYPES = ("MARKET", "LIMIT", "SL", "SL-M")
PRODUCTS = ("CNC", "MIS", "NRML", "CO", "MTF")
WORKING = ("OPEN", "TRIGGER PENDING", "AMO REQ RECEIVED")  # states an order can still fill or be cancelled from
PUSHED = ("OPEN", "TRIGGER PENDING", "AMO REQ RECEIVED", "COMPLETE", "CANCELLED", "REJECTED", "UPDATE")
FINAL = ("COMPLETE", "CANCELLED", "REJECTED")  # each sends a postback; partial fills and modifications send UPDATE
POSTBACK_FIELDS = (
    "user_id", "unfilled_quantity", "app_id", "checksum", "placed_by", "order_id", "exchange_order_id",
    "parent_order_id", "status", "status_message", "status_message_raw", "order_timestamp",
    "exchange_update_timestamp", "exchange_timestamp", "variety", "exchange", "tradingsymbol", "instrument_token",
    "order_type", "transaction_type", "validity", "product", "quantity", "disclosed_quantity", "price",
    "trigger_price", "average_price", "filled_quantity", "pending_quantity", "cancelled_quantity",
    "market_protection", "meta", "tag", "guid")

ORDER_LIMITS = ((10, 1.0), (400, 60.0), (5000, 86400.0))  # Kite's published per-api_key order limits


def order_checksum(order_id: str, order_timestamp: str, api_secret: str) -> str:
    """The `checksum` of an order update (postback or ticker frame): sha256(order_id + order_timestamp +
    api_secret), hex, as Kite signs them."""
    return hashlib.sha256((order_id + order_timestamp + api_secret).encode()).hexdigest()


@dataclass
class Account:
    """One Kite developer app + user. `access_token` is the currently valid token (rotates on re-login
    after expire_token()); `request_token` is a reusable request token for tests (tokens issued by
    /connect/login or issue_request_token() are single-use, as on Kite)."""
    api_key: str = "fakeapikey"
    api_secret: str = "fakeapisecret"
    access_token: str = "fakeaccesstoken"
    user_id: str = "FK1234"
    user_name: str = "Fake Trader"
    email: str = "trader@example.com"
    request_token: str | None = "fakerequesttoken"
    redirect_url: str | None = None
    cash: float = 1_000_000.0


@dataclass
class RequestRecord:
    t: float  # time.monotonic()
    wall: float  # time.time()
    method: str
    path: str
    api_key: str | None
    kind: str  # orders | quote | other | session | instruments | login
    status: int
    error_type: str | None = None


@dataclass
class _Fault:
    remaining: int
    kind: str  # "error" | "stall"
    status: int = 503
    error_type: str = "NetworkException"
    message: str = ""
    method: str | None = None
    path: str | re.Pattern[str] | None = None
    body: bytes | None = None
    content_type: str | None = None
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if isinstance(self.path, re.Pattern):
            return self.path.fullmatch(path) is not None
        return self.path is None or path == self.path or path.startswith(self.path.rstrip("/") + "/")


class _Job:
    """A call the scheduler makes later, unless cancelled first."""

    def __init__(self, call: Callable[[], None]) -> None:
        self.call = call
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Scheduler:
    """One thread makes every delayed call (fills after fill_delay): a threading.Timer per order would start a
    thread per order, on the CPU the system under test shares in benchmarks."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._stopped = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._wake:
            self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fake-kite-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop now; calls not yet due are dropped."""
        with self._wake:
            self._stopped = True
            self._heap.clear()
            self._wake.notify()
        if self._thread:
            self._thread.join(timeout=2)

    def call_later(self, delay: float, call: Callable[[], None]) -> _Job:
        job = _Job(call)
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), job))
            self._wake.notify()
        return job

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._wake.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                job = heapq.heappop(self._heap)[2]
            if not job.cancelled:
                job.call()


@dataclass
class _Order:
    api_key: str
    fields: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    trades: list[dict[str, Any]] = field(default_factory=list)
    timer: _Job | None = None
    partial: tuple[int, str | None] | None = None  # partial_fill_next(): (quantity to fill, cancel message)

    @property
    def status(self) -> str:
        return str(self.fields["status"])


class _KiteError(Exception):
    def __init__(self, error_type: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status or ERROR_STATUS.get(error_type, 500)


class FakeKite:
    """A local Kite Connect: REST on `rest_url`, ticker on `ws_url`. Use as a context manager, or start()/stop().

    Point the real clients at it: `KiteConnect(api_key, access_token=..., root=fake.rest_url)` and
    `KiteTicker(api_key, access_token, root=fake.ws_url)`.

    `latency`: seconds every REST answer waits before it leaves (see set_latency()). `fill_delay`: seconds an
    order stays OPEN before it fills. `postback_url`: where order updates are POSTed, as Kite posts them to an
    app's postback URL (None: no postbacks); `postback_delay`: seconds each postback waits before it is sent."""

    def __init__(self, accounts: Iterable[Account] | None = None,
                 instruments: Iterable[tuple[Instrument, float]] | None = None, *,
                 host: str = "127.0.0.1", port: int = 0, ws_port: int = 0,
                 stall_seconds: float = 8.0, fill_delay: float = 0.0, auto_fill: bool = True,
                 latency: float = 0.0, postback_url: str | None = None, postback_delay: float = 0.0,
                 order_limits: Iterable[tuple[int, float]] = ORDER_LIMITS,
                 quote_limits: Iterable[tuple[int, float]] = (), other_limits: Iterable[tuple[int, float]] = (),
                 heartbeat_interval: float = 1.0, max_ticker_connections: int = 3,
                 snapshot_on_subscribe: bool = True, clock: Callable[[], float] = time.time,
                 verbose: bool = False) -> None:
        self.accounts: dict[str, Account] = {a.api_key: a for a in (accounts or [Account()])}
        self.stall_seconds = stall_seconds
        self.fill_delay = fill_delay
        self.auto_fill = auto_fill
        self.latency, self.latency_jitter = latency, 0.0
        self.postback_url = postback_url
        self.postback_delay = postback_delay
        self._random = random.Random()
        self._scheduler = _Scheduler()
        self._postback_sender: PostbackSender | None = None
        self.limits = {"orders": tuple(order_limits), "quote": tuple(quote_limits), "other": tuple(other_limits)}
        self.clock = clock
        self.verbose = verbose
        self._host, self._port, self._ws_port = host, port, ws_port
        self._ticker_options = {"heartbeat_interval": heartbeat_interval,
                                "max_connections_per_key": max_ticker_connections,
                                "snapshot_on_subscribe": snapshot_on_subscribe}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._instruments: dict[int, Instrument] = {}
        self._by_key: dict[str, int] = {}
        self._market: dict[int, MarketData] = {}
        for inst, price in (instruments if instruments is not None else DEFAULT_INSTRUMENTS):
            self.add_instrument(inst, price)
        self._initial_tokens = {a.api_key: a.access_token for a in self.accounts.values()}
        self._reset_state()
        self.rest: RestServer | None = None
        self.ticker: TickerServer | None = None
        self._running = False

    def _reset_state(self) -> None:
        self._orders: dict[str, _Order] = {}
        self._order_seq = itertools.count(1)
        self._trade_seq = itertools.count(1)
        self._faults: list[_Fault] = []
        self._accept_stalls: deque[tuple[float, bool]] = deque()
        self._rejections: deque[str | None] = deque()
        self._partials: deque[tuple[int, str | None]] = deque()
        self._postbacks_to_drop = 0
        self._expired: set[str] = set()
        self._issued_request_tokens: dict[str, str] = {}
        self._token_generation: dict[str, int] = defaultdict(int)
        self._accepted: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._order_post_times: dict[str, list[float]] = defaultdict(list)
        self._throttled_times: dict[str, list[float]] = defaultdict(list)
        self.requests: list[RequestRecord] = []
        self.ticker_events: list[tuple[float, str, str | None, list[int]]] = []
        # Every order placement that got past auth and the rate limit, refused or not: {"api_key", "params"
        # (the form as the client sent it, e.g. params["market_protection"] == "-1"), "order_id" (None if refused)}.
        self.placements: list[dict[str, Any]] = []
        # Every modification (PUT /orders/{variety}/{order_id}) that got past auth and the rate limit: {"api_key",
        # "order_id", "params" (the form as sent: params["order_type"] == "MARKET", params["market_protection"]
        # == "-1"), "outcome" ("modified", the status that refused it, or None: refused as invalid)}.
        self.modifications: list[dict[str, Any]] = []
        # Every cancellation (DELETE /orders/{variety}/{order_id}) that got past auth and the rate limit: {"api_key",
        # "variety", "order_id", "params" (the query as sent), "outcome" ("cancelled", the status that refused it,
        # or None: refused as invalid)}.
        self.cancellations: list[dict[str, Any]] = []
        # Every postback: (payload, HTTP status of the app's answer, or an error string, or "dropped").
        self.postbacks: list[tuple[dict[str, Any], int | str]] = []

    # ------------------------------------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------------------------------------
    def start(self) -> "FakeKite":
        """Serve. After a stop(), start() again binds the same ports: stop()/start() is a Kite outage as the
        clients see it (connection refused meanwhile), with orders and prices kept."""
        if self._running:
            return self
        self._stopping.clear()
        self.rest = RestServer(self, self._host, self._port)
        self.ticker = TickerServer(self, self._host, self._ws_port, **self._ticker_options)
        self._port, self._ws_port = self.rest.port, self.ticker.port
        self._scheduler.start()
        self._postback_sender = PostbackSender(self._record_postback)
        self._postback_sender.start()
        self.rest.start()
        self.ticker.start()
        self._running = True
        return self

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._stopping.set()
        with self._lock:
            for order in self._orders.values():
                if order.timer:
                    order.timer.cancel()
        self._scheduler.stop()  # outside the lock: a due fill may be waiting for it
        if self._postback_sender:
            self._postback_sender.stop()
        if self.ticker:
            self.ticker.stop()
        if self.rest:
            self.rest.stop()

    def __enter__(self) -> "FakeKite":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def rest_url(self) -> str:
        assert self.rest, "start() the fake first"
        return f"http://{self.rest.host}:{self.rest.port}"

    @property
    def ws_url(self) -> str:
        assert self.ticker, "start() the fake first"
        return f"ws://{self.ticker.host}:{self.ticker.port}"

    @property
    def login_url(self) -> str:
        """Stands in for https://kite.zerodha.com/connect/login (KITE_LOGIN_URL)."""
        return f"{self.rest_url}/connect/login"

    # Conveniences for the (first) account.
    @property
    def account(self) -> Account:
        return next(iter(self.accounts.values()))

    @property
    def api_key(self) -> str:
        return self.account.api_key

    @property
    def api_secret(self) -> str:
        return self.account.api_secret

    @property
    def access_token(self) -> str:
        return self.account.access_token

    def add_account(self, account: Account) -> Account:
        with self._lock:
            self.accounts[account.api_key] = account
            self._initial_tokens.setdefault(account.api_key, account.access_token)
        return account

    def reset(self) -> None:
        """Forget orders, faults, logs and expiries (tokens back to their first values); keep prices."""
        with self._lock:
            for order in self._orders.values():
                if order.timer:
                    order.timer.cancel()
            for api_key, token in self._initial_tokens.items():
                if api_key in self.accounts:
                    self.accounts[api_key].access_token = token
            self._reset_state()

    # ------------------------------------------------------------------------------------------------
    # control API: faults
    # ------------------------------------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 503, error_type: str | None = None, message: str | None = None,
                  *, method: str | None = None, path: str | re.Pattern[str] | None = None,
                  body: bytes | str | None = None, content_type: str | None = None) -> None:
        """The next `n` requests (matching `method` and `path`, if given) are answered with an error and not
        processed (an order is not stored). A str `path` is a prefix on "/" boundaries: "/quote" is /quote and
        /quote/ltp; "/orders/" is everything below /orders (method="GET": order_history and order_trades of
        any id, not the list). A compiled pattern must match the whole path: re.compile("/orders") is only
        the order list. Default envelope for `status`: 503/504
        NetworkException, 429 NetworkException "Too many requests", 500 GeneralException, 400
        InputException, 403 TokenException, 502 DataException; `error_type` overrides it (an unknown one,
        e.g. "MarginException", reaches kiteconnect as GeneralException). `body` + `content_type` send a
        raw body instead (e.g. an HTML gateway page, which kiteconnect turns into DataException)."""
        default_type, default_message = DEFAULT_FAULTS.get(status, ("GeneralException", "Something went wrong"))
        with self._lock:
            self._faults.append(_Fault(
                remaining=n, kind="error", status=status, error_type=error_type or default_type,
                message=message or default_message, method=method, path=path,
                body=body.encode() if isinstance(body, str) else body, content_type=content_type))

    def time_out_next_request(self, n: int = 1, seconds: float | None = None, *, method: str | None = None,
                              path: str | re.Pattern[str] | None = None) -> None:
        """The next `n` requests matching `method` and `path` (as in fail_next) are held `seconds` (default
        stall_seconds), then the connection is closed without an answer and WITHOUT processing: the request
        never landed."""
        with self._lock:
            self._faults.append(_Fault(remaining=n, kind="stall", method=method, path=path,
                                       seconds=self.stall_seconds if seconds is None else seconds))

    def time_out_next_order_after_accept(self, seconds: float | None = None, *, n: int = 1,
                                         respond: bool = True) -> None:
        """The next `n` order placements are accepted, stored and filled as usual, but the HTTP answer is held
        `seconds` (default stall_seconds; make it longer than the client's timeout), then sent late
        (respond=True) or the connection closed without one (respond=False). Other requests, e.g. the
        client's orders() lookup by tag, are served meanwhile."""
        with self._lock:
            for _ in range(n):
                self._accept_stalls.append((self.stall_seconds if seconds is None else seconds, respond))

    def reject_next_order(self, message: str | None = None, n: int = 1) -> None:
        """The next `n` orders get an order_id, then go PUT ORDER REQ RECEIVED → VALIDATION PENDING →
        REJECTED with `status_message` (default: an RMS margin message, as Kite's RMS says it)."""
        with self._lock:
            for _ in range(n):
                self._rejections.append(message)

    def partial_fill_next(self, quantity: int, n: int = 1, message: str | None = None) -> None:
        """The next `n` orders that reach the book fill only `quantity` (at the last price, when they would
        fill anyway: after fill_delay, a LIMIT at its price), then the exchange cancels the rest: CANCELLED
        with filled_quantity=quantity, cancelled_quantity=the rest and `status_message` (default: a market
        protection cancel), as a protected MARKET or an IOC order ends on Kite. Rejected and AMO orders
        leave the script for the next order."""
        if quantity < 0:
            raise ValueError("quantity must be >= 0")
        with self._lock:
            self._partials.extend([(quantity, message)] * n)

    def set_latency(self, seconds: float, jitter: float = 0.0) -> None:
        """Every REST answer (errors too) leaves `seconds` ± up to `jitter` (uniform, never below 0) after
        the request is processed, as the network and Kite's gateway add. The wait holds no lock: many
        requests are served at once."""
        with self._lock:
            self.latency, self.latency_jitter = seconds, jitter

    def set_postback_url(self, url: str | None) -> None:
        """Where postbacks go from now on (None: none are sent)."""
        with self._lock:
            self.postback_url = url

    def drop_postbacks(self, n: int = 1) -> None:
        """The next `n` postbacks are not sent (recorded in `postbacks` as "dropped"), as when Kite's postback
        never reaches the app: for testing the app's fallback (ticker updates, order_history polling)."""
        with self._lock:
            self._postbacks_to_drop += n

    def expire_token(self, api_key: str | None = None) -> None:
        """The account's current access token stops working (403 TokenException on REST, 403 on the ticker
        handshake), as at Kite's 6 AM expiry; a new generate_session issues a fresh token. Ticker links
        already open stay open (call drop_ticker_connections() to force the reconnect)."""
        with self._lock:
            for account in self._select(api_key):
                self._expired.add(account.access_token)

    def drop_ticker_connections(self, api_key: str | None = None, clean: bool = False) -> int:
        """Cut ticker links (TCP reset, no close frame; clean=True sends close 1001 first). Returns how many."""
        assert self.ticker
        return self.ticker.drop(api_key, clean=clean)

    def drop_rest_connections(self) -> None:
        """Close every kept-alive REST connection (the client's next request opens a new one)."""
        assert self.rest
        self.rest.drop_connections()

    def issue_request_token(self, api_key: str | None = None) -> str:
        """A single-use request token, as Kite's login redirect carries."""
        account = self._select(api_key)[0]
        token = _alnum(32)
        with self._lock:
            self._issued_request_tokens[token] = account.api_key
        return token

    # ------------------------------------------------------------------------------------------------
    # control API: market
    # ------------------------------------------------------------------------------------------------
    def add_instrument(self, inst: Instrument, price: float) -> None:
        with self._lock:
            self._instruments[inst.instrument_token] = inst
            self._by_key[inst.key] = inst.instrument_token
            self._market[inst.instrument_token] = MarketData.opening(price)

    def instrument(self, ref: int | str | tuple[str, str]) -> Instrument:
        return self._instruments[self._token(ref)]

    def market(self, ref: int | str | tuple[str, str]) -> MarketData:
        return self._market[self._token(ref)]

    def price(self, exchange: str, symbol: str) -> float:
        return self.market((exchange, symbol)).last_price

    def set_price(self, exchange: str, symbol: str, price: float) -> None:
        """Move the last price (what ltp/quote answer and what MARKET orders fill at). Sends no tick;
        working LIMIT/SL orders are re-checked."""
        token = self._token((exchange, symbol))
        with self._lock:
            self._market[token].update(price, now=self.clock())
            self._recheck(token)

    def tick(self, instrument: int | str | tuple[str, str], price: float | None = None, *,
             quantity: int | None = None, **fields: float) -> int:
        """A trade now: update the instrument (price, and any MarketData field: volume, open, close, oi...)
        and push a tick to every ticker link subscribed to it, in that link's mode. `instrument` is an
        instrument_token, "NSE:INFY" or ("NSE", "INFY"). Returns the number of links reached; an unknown
        token raises KeyError (to tick an unknown token, add_instrument() it first)."""
        token = self._token(instrument)
        with self._lock:
            market = self._market[token]
            market.update(market.last_price if price is None else price, quantity=quantity, now=self.clock(),
                          **fields)
            self._recheck(token)
        assert self.ticker
        return self.ticker.broadcast_ticks([token])

    def subscriptions(self, api_key: str | None = None) -> list[dict[int, str]]:
        """Each open ticker link's {token: mode}."""
        assert self.ticker
        return [dict(c.subscriptions) for c in self.ticker.snapshot()
                if c.open and c.account is not None and (api_key is None or c.account.api_key == api_key)]

    def wait_for_subscription(self, token: int, mode: str | None = None, timeout: float = 5.0,
                              connections: int = 1) -> bool:
        """Block until `connections` open links subscribe to `token` (in `mode`, if given)."""
        def ready() -> bool:
            return sum(1 for subs in self.subscriptions()
                       if token in subs and (mode is None or subs[token] == mode)) >= connections
        return wait(ready, timeout)

    def ticker_connection_count(self, api_key: str | None = None) -> int:
        assert self.ticker
        return sum(1 for c in self.ticker.snapshot()
                   if c.open and (api_key is None or (c.account and c.account.api_key == api_key)))

    # ------------------------------------------------------------------------------------------------
    # control API: orders
    # ------------------------------------------------------------------------------------------------
    @property
    def orders(self) -> list[dict[str, Any]]:
        """Every order's current state (Kite's order dict: order_id, status, tag, tradingsymbol, ...)."""
        with self._lock:
            return [dict(o.fields) for o in self._orders.values()]

    def orders_for(self, api_key: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(o.fields) for o in self._orders.values() if o.api_key == api_key]

    def order(self, order_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._orders[order_id].fields)

    def history(self, order_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(h) for h in self._orders[order_id].history]

    def wait_for_orders(self, count: int, timeout: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self._orders) >= count, timeout)

    def wait_for_postbacks(self, count: int, timeout: float = 5.0) -> bool:
        """Block until `postbacks` holds `count` entries (sent, failed or dropped)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.postbacks) >= count, timeout)

    def fill_order(self, order_id: str, quantity: int | None = None, price: float | None = None) -> dict[str, Any]:
        """Fill a working order now (all of what is pending, or `quantity` of it: a partial fill stays OPEN),
        at `price` or the last price. For auto_fill=False tests."""
        with self._lock:
            order = self._orders[order_id]
            if order.status not in WORKING:
                raise ValueError(f"order {order_id} is {order.status}")
            if order.status != "OPEN":
                self._transition(order, "OPEN")
            self._fill(order, quantity, price)
            return dict(order.fields)

    def cancel_order(self, order_id: str, message: str | None = None) -> dict[str, Any]:
        """The exchange cancels a working order (e.g. IOC unfilled, or a circuit limit)."""
        with self._lock:
            order = self._orders[order_id]
            self._cancel(order, message)
            return dict(order.fields)

    def reject_order(self, order_id: str, message: str) -> dict[str, Any]:
        """The exchange rejects a working order."""
        with self._lock:
            order = self._orders[order_id]
            self._transition(order, "REJECTED", status_message=message, status_message_raw=message,
                             pending_quantity=0)
            return dict(order.fields)

    # ------------------------------------------------------------------------------------------------
    # control API: what happened
    # ------------------------------------------------------------------------------------------------
    def order_post_times(self, api_key: str | None = None) -> list[float]:
        """time.monotonic() of every authenticated POST /orders/{variety}, throttled ones included."""
        with self._lock:
            return sorted(itertools.chain.from_iterable(
                v for k, v in self._order_post_times.items() if api_key is None or k == api_key))

    def throttled_times(self, api_key: str | None = None) -> list[float]:
        """time.monotonic() of every 429 the fake gave for going over a rate limit (not fail_next ones)."""
        with self._lock:
            return sorted(itertools.chain.from_iterable(
                v for k, v in self._throttled_times.items() if api_key is None or k == api_key))

    def max_rate(self, api_key: str | None = None, kind: str = "orders", window: float = 1.0,
                 accepted_only: bool = True) -> int:
        """The most `kind` requests (orders | quote | other) in any `window`-second span, per the log:
        what a test asserts to check the app kept under Kite's limits."""
        with self._lock:
            times = sorted(r.t for r in self.requests if r.kind == kind
                           and (api_key is None or r.api_key == api_key) and (not accepted_only or 200 <= r.status < 400))
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def requests_per_second(self, api_key: str | None = None, kind: str = "orders") -> dict[int, int]:
        """{whole wall-clock second: count} of `kind` requests (throttled ones included)."""
        counts: dict[int, int] = defaultdict(int)
        with self._lock:
            for r in self.requests:
                if r.kind == kind and (api_key is None or r.api_key == api_key):
                    counts[int(r.wall)] += 1
        return dict(counts)

    # ------------------------------------------------------------------------------------------------
    # internals: lookups and time
    # ------------------------------------------------------------------------------------------------
    def _select(self, api_key: str | None) -> list[Account]:
        if api_key is None:
            return list(self.accounts.values())
        return [self.accounts[api_key]]

    def _token(self, ref: int | str | tuple[str, str]) -> int:
        if isinstance(ref, tuple):
            ref = f"{ref[0]}:{ref[1]}"
        if isinstance(ref, str):
            if ref.isdigit():
                ref = int(ref)
            else:
                return self._by_key[ref]
        if ref not in self._instruments:
            raise KeyError(ref)
        return ref

    def _lookup_market(self, token: int) -> tuple[Instrument, MarketData] | None:
        with self._lock:
            inst = self._instruments.get(token)
            return (inst, self._market[token]) if inst else None

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock(), IST).strftime("%Y-%m-%d %H:%M:%S")

    def _stamp(self, epoch: float) -> str:
        return datetime.fromtimestamp(epoch, IST).strftime("%Y-%m-%d %H:%M:%S")

    def _account_for(self, request: Request) -> Account:
        auth = request.headers.get("authorization", "")
        if auth.startswith("token ") and ":" in auth:
            api_key, _, token = auth[len("token "):].partition(":")
            account = self.accounts.get(api_key)
            if account and token == account.access_token and token not in self._expired:
                return account
        raise _KiteError("TokenException", TOKEN_MESSAGE)

    def _ticker_account(self, api_key: str, access_token: str) -> Account | None:
        with self._lock:
            account = self.accounts.get(api_key)
            if account and access_token == account.access_token and access_token not in self._expired:
                return account
            return None

    def _ticker_event(self, what: str, conn: TickerConnection, tokens: list[int] | None = None) -> None:
        with self._lock:
            self.ticker_events.append((time.monotonic(), what, conn.account.api_key if conn.account else None,
                                       list(tokens or [])))

    # ------------------------------------------------------------------------------------------------
    # internals: HTTP
    # ------------------------------------------------------------------------------------------------
    _ROUTES: list[tuple[str, re.Pattern[str], str, str, bool]] = [
        # method, path, handler, rate-limit kind, needs auth
        ("POST", re.compile(r"/session/token"), "_session_token", "session", False),
        ("DELETE", re.compile(r"/session/token"), "_session_invalidate", "session", False),
        ("GET", re.compile(r"/connect/login"), "_login", "login", False),
        ("GET", re.compile(r"/user/profile"), "_profile", "other", True),
        ("GET", re.compile(r"/user/margins(?:/(?P<segment>[^/]+))?"), "_margins", "other", True),
        ("GET", re.compile(r"/orders"), "_list_orders", "other", True),
        ("GET", re.compile(r"/orders/(?P<order_id>[^/]+)"), "_order_history", "other", True),
        ("GET", re.compile(r"/orders/(?P<order_id>[^/]+)/trades"), "_order_trades", "other", True),
        ("POST", re.compile(r"/orders/(?P<variety>[^/]+)"), "_place_order", "orders", True),
        ("PUT", re.compile(r"/orders/(?P<variety>[^/]+)/(?P<order_id>[^/]+)"), "_modify_order", "other", True),
        ("DELETE", re.compile(r"/orders/(?P<variety>[^/]+)/(?P<order_id>[^/]+)"), "_cancel_order_route", "other", True),
        ("GET", re.compile(r"/trades"), "_trades", "other", True),
        ("GET", re.compile(r"/portfolio/positions"), "_positions", "other", True),
        ("GET", re.compile(r"/portfolio/holdings"), "_holdings", "other", True),
        ("GET", re.compile(r"/instruments(?:/(?P<exchange>[A-Za-z]+))?"), "_instrument_dump", "instruments", False),
        ("GET", re.compile(r"/quote"), "_quote_full", "quote", True),
        ("GET", re.compile(r"/quote/ohlc"), "_quote_ohlc", "quote", True),
        ("GET", re.compile(r"/quote/ltp"), "_quote_ltp", "quote", True),
    ]

    def _route(self, method: str, path: str) -> tuple[str, str, bool, dict[str, str]] | None:
        path = path.rstrip("/") or "/"
        for route_method, pattern, handler, kind, auth in self._ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                return handler, kind, auth, {k: v for k, v in match.groupdict().items() if v is not None}
        return None

    def _handle_http(self, request: Request) -> Response:
        """Answer a request; the HTTP handler holds the answer `response.delay` (no lock held) before sending."""
        response = self._answer(request)
        response.delay += self._latency()
        return response

    def _latency(self) -> float:
        if not self.latency_jitter:
            return self.latency
        return max(0.0, self.latency + self._random.uniform(-self.latency_jitter, self.latency_jitter))

    def _answer(self, request: Request) -> Response:
        method, path = request.method, request.path
        route = self._route(method, path)
        handler, kind, needs_auth, params = route if route else ("", "other", False, {})
        api_key = self._claimed_api_key(request)
        with self._lock:
            fault = next((f for f in self._faults if f.matches(method, path)), None)
            if fault:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
        if fault and fault.kind == "stall":
            self._record(request, kind, api_key, 0, "stall")
            return Response(0, b"", delay=fault.seconds, drop=True)
        if fault:
            response = (Response(fault.status, fault.body, fault.content_type or "text/html")
                        if fault.body is not None else error(fault.status, fault.error_type, fault.message))
            self._record(request, kind, api_key, fault.status, fault.error_type)
            return response
        try:
            if route is None:
                raise _KiteError("GeneralException", "Route not found", 404)
            account = self._account_for(request) if needs_auth else None
            if account is not None and kind in self.limits:
                self._rate_check(account.api_key, kind, path)
            response = getattr(self, handler)(request, account, **params)
        except _KiteError as exc:
            response = error(exc.status, exc.error_type, exc.message)
            self._record(request, kind, api_key, exc.status, exc.error_type)
            return response
        except Exception as exc:  # noqa: BLE001 - a bug in the fake: answer like Kite's 500, and say so
            traceback.print_exc()
            self._record(request, kind, api_key, 500, "GeneralException")
            return error(500, "GeneralException", f"fake kite error: {exc!r}")
        self._record(request, kind, api_key, response.status, None)
        return response

    def _claimed_api_key(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.startswith("token ") and ":" in auth:
            return auth[len("token "):].partition(":")[0]
        return request.arg("api_key")

    def _record(self, request: Request, kind: str, api_key: str | None, status: int, error_type: str | None) -> None:
        with self._lock:
            self.requests.append(RequestRecord(time.monotonic(), time.time(), request.method, request.path, api_key,
                                               kind, status, error_type))

    def _rate_check(self, api_key: str, kind: str, path: str) -> None:
        now = time.monotonic()
        with self._lock:
            if kind == "orders":
                self._order_post_times[api_key].append(now)
            accepted = self._accepted[(api_key, kind)]
            limits = self.limits.get(kind, ())
            longest = max((w for _, w in limits), default=0.0)
            while accepted and now - accepted[0] >= longest:
                accepted.popleft()
            for count, window in limits:
                if sum(1 for t in accepted if now - t < window) >= count:
                    self._throttled_times[api_key].append(now)
                    raise _KiteError("NetworkException", "Too many requests", 429)
            accepted.append(now)

    # --- session ---------------------------------------------------------------------------------------
    def _session_token(self, request: Request, _account: None) -> Response:
        api_key, request_token, checksum = (request.arg(k) for k in ("api_key", "request_token", "checksum"))
        if not api_key or not request_token or not checksum:
            missing = next(k for k, v in (("api_key", api_key), ("request_token", request_token),
                                          ("checksum", checksum)) if not v)
            raise _KiteError("InputException", f"Missing `{missing}`")
        with self._lock:
            account = self.accounts.get(api_key)
            if account is None:
                raise _KiteError("InputException", "Invalid `api_key`.")
            expected = hashlib.sha256((api_key + request_token + account.api_secret).encode()).hexdigest()
            if checksum != expected:
                raise _KiteError("TokenException", "Invalid `checksum`.")
            issued_for = self._issued_request_tokens.pop(request_token, None)
            if issued_for != api_key and request_token != account.request_token:
                raise _KiteError("TokenException", "Token is invalid or has expired.")
            if account.access_token in self._expired:
                self._token_generation[api_key] += 1
                base = self._initial_tokens.get(api_key, account.access_token)
                account.access_token = f"{base}{self._token_generation[api_key]}"
            return ok({**self._profile_data(account), "api_key": api_key, "access_token": account.access_token,
                       "public_token": hashlib.md5(account.access_token.encode()).hexdigest(),  # noqa: S324
                       "refresh_token": "", "enctoken": _alnum(32), "login_time": self._now()})

    def _session_invalidate(self, request: Request, _account: None) -> Response:
        api_key, token = request.arg("api_key"), request.arg("access_token")
        with self._lock:
            account = self.accounts.get(api_key or "")
            if account and token == account.access_token:
                self._expired.add(token)
        return ok(True)

    def _login(self, request: Request, _account: None) -> Response:
        account = self.accounts.get(request.arg("api_key") or "")
        if account is None:
            return Response(400, b"<html><body>Invalid api_key</body></html>", "text/html")
        token = self.issue_request_token(account.api_key)
        if not account.redirect_url:
            page = (f"<html><body><p>Fake Kite login for {html.escape(account.user_id)}.</p>"
                    f"<p>request_token: <code id='request_token'>{html.escape(token)}</code></p></body></html>")
            return Response(200, page.encode(), "text/html")
        parts = urlsplit(account.redirect_url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        query += [("action", "login"), ("type", "login"), ("status", "success"), ("request_token", token)]
        query += parse_qsl(request.arg("redirect_params") or "", keep_blank_values=True)
        location = urlunsplit(parts._replace(query=urlencode(query)))
        return Response(302, b"", "text/html", headers=[("Location", location)])

    # --- user ------------------------------------------------------------------------------------------
    def _profile_data(self, account: Account) -> dict[str, Any]:
        return {"user_id": account.user_id, "user_type": "individual", "email": account.email,
                "user_name": account.user_name, "user_shortname": account.user_name.split()[0],
                "broker": "ZERODHA", "exchanges": ["NSE", "BSE", "NFO", "BFO", "CDS", "MCX"],
                "products": list(PRODUCTS[:4]), "order_types": list(ORDER_TYPES), "avatar_url": None,
                "meta": {"demat_consent": "consent"}}

    def _profile(self, request: Request, account: Account) -> Response:
        return ok(self._profile_data(account))

    def _margins(self, request: Request, account: Account, segment: str | None = None) -> Response:
        def one(cash: float) -> dict[str, Any]:
            return {"enabled": True, "net": cash,
                    "available": {"adhoc_margin": 0, "cash": cash, "opening_balance": cash, "live_balance": cash,
                                  "collateral": 0, "intraday_payin": 0},
                    "utilised": {"debits": 0, "exposure": 0, "m2m_realised": 0, "m2m_unrealised": 0,
                                 "option_premium": 0, "payout": 0, "span": 0, "holding_sales": 0, "turnover": 0,
                                 "liquid_collateral": 0, "stock_collateral": 0, "delivery": 0}}
        data = {"equity": one(account.cash), "commodity": one(0.0)}
        if segment:
            if segment not in data:
                raise _KiteError("InputException", "Invalid segment")
            return ok(data[segment])
        return ok(data)

    # --- orders ----------------------------------------------------------------------------------------
    def _place_order(self, request: Request, account: Account, variety: str) -> Response:
        placement: dict[str, Any] = {"api_key": account.api_key, "params": request.params(), "order_id": None}
        with self._lock:
            self.placements.append(placement)
        if variety not in VARIETIES:
            raise _KiteError("InputException", "Invalid `variety`.")
        exchange, symbol = request.arg("exchange") or "", request.arg("tradingsymbol") or ""
        side, order_type = request.arg("transaction_type") or "", request.arg("order_type") or ""
        product, tag = request.arg("product") or "", request.arg("tag")
        for name, value in (("exchange", exchange), ("tradingsymbol", symbol), ("transaction_type", side),
                            ("order_type", order_type), ("product", product), ("quantity", request.arg("quantity"))):
            if not value:
                raise _KiteError("InputException", f"Missing `{name}`")
        if side not in ("BUY", "SELL"):
            raise _KiteError("InputException", "Invalid `transaction_type`.")
        if order_type not in ORDER_TYPES:
            raise _KiteError("InputException", "Invalid `order_type`.")
        if product not in PRODUCTS:
            raise _KiteError("InputException", "Invalid `product`.")
        quantity = _int(request.arg("quantity"))
        if quantity is None or quantity <= 0:
            raise _KiteError("InputException", "Invalid `quantity`.")
        if tag is not None and (len(tag) > 20 or not tag.isalnum()):
            raise _KiteError("InputException", "Invalid `tag`. Alphanumeric only, maximum 20 characters.")
        price, trigger = _float(request.arg("price")) or 0.0, _float(request.arg("trigger_price")) or 0.0
        if order_type in ("LIMIT", "SL") and price <= 0:
            raise _KiteError("InputException", "Invalid `price`.")
        if order_type in ("SL", "SL-M") and trigger <= 0:
            raise _KiteError("InputException", "Invalid `trigger_price`.")
        market_protection = _market_protection(request.arg("market_protection"), order_type)
        with self._lock:
            token = self._by_key.get(f"{exchange}:{symbol}")
            if token is None:
                raise _KiteError("InputException", "The instrument you are placing an order for has either expired "
                                 "or does not exist.")
            inst = self._instruments[token]
            if inst.is_index:
                raise _KiteError("InputException", "Indices are not tradable.")
            order_id = f"{datetime.fromtimestamp(self.clock(), IST):%y%m%d}{next(self._order_seq):09d}"
            order = _Order(account.api_key, {
                "account_id": account.user_id, "placed_by": account.user_id, "order_id": order_id,
                "exchange_order_id": None, "parent_order_id": None, "status": "PUT ORDER REQ RECEIVED",
                "status_message": None, "status_message_raw": None, "order_timestamp": self._now(),
                "exchange_update_timestamp": None, "exchange_timestamp": None, "variety": variety, "modified": False,
                "exchange": exchange, "tradingsymbol": symbol, "instrument_token": token, "order_type": order_type,
                "transaction_type": side, "validity": request.arg("validity") or "DAY",
                "validity_ttl": _int(request.arg("validity_ttl")) or 0, "product": product, "quantity": quantity,
                "disclosed_quantity": _int(request.arg("disclosed_quantity")) or 0, "price": price,
                "trigger_price": trigger, "average_price": 0, "filled_quantity": 0, "pending_quantity": quantity,
                "cancelled_quantity": 0, "market_protection": market_protection,
                "meta": {}, "tag": tag, "tags": [tag] if tag else [], "guid": uuid.uuid4().hex[:20]})
            if request.arg("algo_id"):
                order.fields["algo_id"] = request.arg("algo_id")
            self._orders[order_id] = order
            placement["order_id"] = order_id
            order.history.append(dict(order.fields))
            self._transition(order, "VALIDATION PENDING")
            rejection = self._rejections.popleft() if self._rejections else False
            if rejection is not False:
                message = rejection or RMS_MESSAGE.format(user_id=account.user_id)
                self._transition(order, "REJECTED", status_message=message, status_message_raw=message,
                                 pending_quantity=0)
            elif variety == "amo":
                self._transition(order, "AMO REQ RECEIVED")
            else:
                order.partial = self._partials.popleft() if self._partials else None
                self._transition(order, "OPEN PENDING")
                self._open(order)
            stall = self._accept_stalls.popleft() if self._accept_stalls else None
            self._changed.notify_all()
        response = ok({"order_id": order_id})
        if stall:
            response.delay, response.drop = stall[0], not stall[1]
        return response

    def _open(self, order: _Order) -> None:
        """From OPEN PENDING: onto the exchange's book, then fill now/later if it can."""
        exchange_order_id = f"{1100000000000000 + int(order.fields['order_id'][-9:])}"
        first = "TRIGGER PENDING" if order.fields["order_type"] in ("SL", "SL-M") else "OPEN"
        self._transition(order, first, exchange_order_id=exchange_order_id, exchange_timestamp=self._now())
        self._schedule_fill(order)

    def _schedule_fill(self, order: _Order) -> None:
        if not self.auto_fill:
            return
        if self.fill_delay > 0:
            order.timer = self._scheduler.call_later(self.fill_delay, lambda: self._fill_due(order))
        else:
            self._try_fill(order)

    def _fill_due(self, order: _Order) -> None:
        with self._lock:
            if order.timer is None or order.timer.cancelled:  # cancelled after the scheduler picked it up
                return
            order.timer = None
            self._try_fill(order)

    def _try_fill(self, order: _Order) -> None:
        f = order.fields
        ltp = self._market[f["instrument_token"]].last_price
        buy = f["transaction_type"] == "BUY"
        if f["status"] == "TRIGGER PENDING":
            if not (ltp >= f["trigger_price"] if buy else ltp <= f["trigger_price"]):
                return
            self._transition(order, "OPEN")
        if f["status"] != "OPEN":
            return
        if f["order_type"] in ("LIMIT", "SL") and not (ltp <= f["price"] if buy else ltp >= f["price"]):
            return
        if order.partial is None:
            self._fill(order, None, ltp)
            return
        quantity, message = order.partial
        order.partial = None
        self._fill(order, quantity, ltp)
        if order.status == "OPEN":
            self._cancel(order, message or PARTIAL_CANCEL_MESSAGE)

    def _recheck(self, token: int) -> None:
        if not self.auto_fill:
            return
        for order in list(self._orders.values()):
            if (order.fields["instrument_token"] == token and order.status in ("OPEN", "TRIGGER PENDING")
                    and order.timer is None):
                self._try_fill(order)

    def _fill(self, order: _Order, quantity: int | None, price: float | None) -> None:
        f = order.fields
        pending = f["pending_quantity"]
        quantity = pending if quantity is None else min(quantity, pending)
        if quantity <= 0:
            return
        price = self._market[f["instrument_token"]].last_price if price is None else price
        filled = f["filled_quantity"] + quantity
        average = round((f["average_price"] * f["filled_quantity"] + price * quantity) / filled, 2)
        now = self._now()
        order.trades.append({
            "trade_id": f"{next(self._trade_seq):08d}", "order_id": f["order_id"],
            "exchange_order_id": f["exchange_order_id"], "exchange": f["exchange"],
            "tradingsymbol": f["tradingsymbol"], "instrument_token": f["instrument_token"], "product": f["product"],
            "average_price": price, "quantity": quantity, "transaction_type": f["transaction_type"],
            "fill_timestamp": now, "order_timestamp": now, "exchange_timestamp": now})
        self._transition(order, "COMPLETE" if filled == f["quantity"] else "OPEN", update=True,
                         filled_quantity=filled, pending_quantity=f["quantity"] - filled, average_price=average)

    def _cancel(self, order: _Order, message: str | None = None) -> None:
        if order.status not in WORKING:
            raise _KiteError("InputException", f"Order cannot be cancelled as it is {order.status.lower()}.")
        if order.timer:
            order.timer.cancel()
            order.timer = None
        self._transition(order, "CANCEL PENDING")
        self._transition(order, "CANCELLED", cancelled_quantity=order.fields["pending_quantity"], pending_quantity=0,
                         status_message=message, status_message_raw=message)

    def _transition(self, order: _Order, status: str, *, update: bool = False, **changes: Any) -> None:
        """Move the order to `status` and tell the account: a ticker frame for the PUSHED statuses, a
        postback for the FINAL ones, and a postback with status UPDATE (Kite's word for a partial fill or a
        modification) when `update` and the order is still working."""
        f = order.fields
        f.update(changes, status=status, order_timestamp=self._now())
        if f["exchange_order_id"] and status != "OPEN PENDING":
            f["exchange_update_timestamp"] = f["order_timestamp"]
        order.history.append(dict(f))
        self._changed.notify_all()
        ticker = self.ticker if status in PUSHED else None
        postback_status = status if status in FINAL else "UPDATE" if update else None
        if self.postback_url is None or self._postback_sender is None:
            postback_status = None  # nowhere to send it
        if ticker is None and postback_status is None:
            return
        account = self.accounts.get(order.api_key)
        message = {**f, "user_id": account.user_id if account else None, "unfilled_quantity": f["pending_quantity"],
                   "app_id": 0, "checksum": order_checksum(f["order_id"], f["order_timestamp"],
                                                           account.api_secret if account else "")}
        if ticker is not None:
            ticker.broadcast_order(order.api_key, message)
        if postback_status is not None:
            self._queue_postback({**{name: message[name] for name in POSTBACK_FIELDS}, "status": postback_status})

    def _queue_postback(self, payload: dict[str, Any]) -> None:
        """Hand a postback to the sender thread (called under the lock, so it must not block)."""
        assert self.postback_url is not None and self._postback_sender is not None
        if self._postbacks_to_drop > 0:
            self._postbacks_to_drop -= 1
            self.postbacks.append((payload, "dropped"))
            self._changed.notify_all()
            return
        self._postback_sender.send(self.postback_url, payload, time.monotonic() + self.postback_delay)

    def _record_postback(self, payload: dict[str, Any], outcome: int | str) -> None:
        with self._changed:
            self.postbacks.append((payload, outcome))
            self._changed.notify_all()

    def _owned(self, account: Account, order_id: str) -> _Order:
        order = self._orders.get(order_id)
        if order is None or order.api_key != account.api_key:
            raise _KiteError("InputException", "Couldn't find that `order_id`.")
        return order

    def _list_orders(self, request: Request, account: Account) -> Response:
        with self._lock:
            return ok([dict(o.fields) for o in self._orders.values() if o.api_key == account.api_key])

    def _order_history(self, request: Request, account: Account, order_id: str) -> Response:
        with self._lock:
            return ok([dict(h) for h in self._owned(account, order_id).history])

    def _order_trades(self, request: Request, account: Account, order_id: str) -> Response:
        with self._lock:
            return ok([dict(t) for t in self._owned(account, order_id).trades])

    def _trades(self, request: Request, account: Account) -> Response:
        with self._lock:
            return ok([dict(t) for o in self._orders.values() if o.api_key == account.api_key for t in o.trades])

    def _modify_order(self, request: Request, account: Account, variety: str, order_id: str) -> Response:
        modification: dict[str, Any] = {"api_key": account.api_key, "order_id": order_id, "params": request.params(),
                                        "outcome": None}
        with self._lock:
            self.modifications.append(modification)
            order = self._owned(account, order_id)
            if order.status not in WORKING:
                modification["outcome"] = order.status
                raise _KiteError("InputException", f"Order cannot be modified as it is {order.status.lower()}.")
            changes: dict[str, Any] = {"modified": True}
            if request.arg("order_type") and request.arg("order_type") not in ORDER_TYPES:
                raise _KiteError("InputException", "Invalid `order_type`.")
            new_type = request.arg("order_type") or order.fields["order_type"]
            if request.arg("market_protection") is not None or (request.arg("order_type") and new_type in
                                                               ("MARKET", "SL-M")):
                # Kite's 2026 rule holds for a modification too: an order becoming MARKET needs its protection.
                changes["market_protection"] = _market_protection(request.arg("market_protection"), new_type)
            for name, parse in (("quantity", _int), ("price", _float), ("trigger_price", _float),
                                ("disclosed_quantity", _int)):
                value = parse(request.arg(name))
                if value is not None:
                    changes[name] = value
            if request.arg("order_type"):
                changes["order_type"] = request.arg("order_type")
            if "quantity" in changes:
                changes["pending_quantity"] = changes["quantity"] - order.fields["filled_quantity"]
            back = order.status
            self._transition(order, "MODIFY VALIDATION PENDING")
            self._transition(order, "MODIFY PENDING", **changes)
            self._transition(order, back, update=True)
            if back != "AMO REQ RECEIVED" and order.timer is None:
                self._schedule_fill(order)
            modification["outcome"] = "modified"
            return ok({"order_id": order_id})

    def _cancel_order_route(self, request: Request, account: Account, variety: str, order_id: str) -> Response:
        """Kite's cancel_order: {"status": "success", "data": {"order_id": ...}}; an order no longer working is
        refused with an InputException ("Order cannot be cancelled as it is complete."), HTTP 400."""
        cancellation: dict[str, Any] = {"api_key": account.api_key, "variety": variety, "order_id": order_id,
                                        "params": request.params(), "outcome": None}
        with self._lock:
            self.cancellations.append(cancellation)
            if variety not in VARIETIES:
                raise _KiteError("InputException", "Invalid `variety`.")
            order = self._owned(account, order_id)
            if order.status not in WORKING:
                cancellation["outcome"] = order.status
            self._cancel(order)
            cancellation["outcome"] = "cancelled"
            return ok({"order_id": order_id})

    def _positions(self, request: Request, account: Account) -> Response:
        with self._lock:
            books: dict[tuple[str, str, str], dict[str, Any]] = {}
            for order in self._orders.values():
                if order.api_key != account.api_key:
                    continue
                for trade in order.trades:
                    key = (trade["exchange"], trade["tradingsymbol"], trade["product"])
                    book = books.setdefault(key, {"token": trade["instrument_token"], "bq": 0, "bv": 0.0, "sq": 0,
                                                  "sv": 0.0})
                    side = "b" if trade["transaction_type"] == "BUY" else "s"
                    book[side + "q"] += trade["quantity"]
                    book[side + "v"] += trade["quantity"] * trade["average_price"]
            net = []
            for (exchange, symbol, product), b in books.items():
                market = self._market[b["token"]]
                quantity = b["bq"] - b["sq"]
                buy_price = round(b["bv"] / b["bq"], 2) if b["bq"] else 0
                sell_price = round(b["sv"] / b["sq"], 2) if b["sq"] else 0
                value = round(b["sv"] - b["bv"], 2)
                pnl = round(value + quantity * market.last_price, 2)
                net.append({
                    "tradingsymbol": symbol, "exchange": exchange, "instrument_token": b["token"], "product": product,
                    "quantity": quantity, "overnight_quantity": 0, "multiplier": 1,
                    "average_price": buy_price if quantity > 0 else sell_price if quantity < 0 else 0,
                    "close_price": market.close, "last_price": market.last_price, "value": value, "pnl": pnl,
                    "m2m": pnl, "unrealised": pnl, "realised": 0, "buy_quantity": b["bq"], "buy_price": buy_price,
                    "buy_value": round(b["bv"], 2), "buy_m2m": round(b["bv"], 2), "sell_quantity": b["sq"],
                    "sell_price": sell_price, "sell_value": round(b["sv"], 2), "sell_m2m": round(b["sv"], 2),
                    "day_buy_quantity": b["bq"], "day_buy_price": buy_price, "day_buy_value": round(b["bv"], 2),
                    "day_sell_quantity": b["sq"], "day_sell_price": sell_price, "day_sell_value": round(b["sv"], 2)})
            return ok({"net": net, "day": [dict(p) for p in net]})

    def _holdings(self, request: Request, account: Account) -> Response:
        return ok([])

    # --- market data -----------------------------------------------------------------------------------
    def _instrument_dump(self, request: Request, _account: None, exchange: str | None = None) -> Response:
        with self._lock:
            rows = [(inst, self._market[token]) for token, inst in self._instruments.items()
                    if exchange is None or inst.exchange == exchange.upper()]
            return Response(200, render_csv(rows), CSV)

    def _quote_rows(self, request: Request) -> list[tuple[str, Instrument, MarketData]]:
        keys = request.query.get("i") or []
        if not keys:
            raise _KiteError("InputException", "No instruments specified.")
        rows = []
        with self._lock:
            for key in keys:
                token = self._by_key.get(key) or (int(key) if key.isdigit() and int(key) in self._instruments else None)
                if token is not None:  # Kite leaves unknown instruments out of `data`
                    rows.append((key, self._instruments[token], self._market[token]))
        return rows

    def _quote_ltp(self, request: Request, account: Account) -> Response:
        return ok({key: {"instrument_token": inst.instrument_token, "last_price": m.last_price}
                   for key, inst, m in self._quote_rows(request)})

    def _quote_ohlc(self, request: Request, account: Account) -> Response:
        return ok({key: {"instrument_token": inst.instrument_token, "last_price": m.last_price,
                         "ohlc": {"open": m.open, "high": m.high, "low": m.low, "close": m.close}}
                   for key, inst, m in self._quote_rows(request)})

    def _quote_full(self, request: Request, account: Account) -> Response:
        data = {}
        for key, inst, m in self._quote_rows(request):
            data[key] = {
                "instrument_token": inst.instrument_token, "timestamp": self._stamp(m.timestamp),
                "last_trade_time": self._stamp(m.last_trade_time), "last_price": m.last_price,
                "last_quantity": m.last_quantity, "buy_quantity": m.buy_quantity, "sell_quantity": m.sell_quantity,
                "volume": m.volume, "average_price": m.average_price, "oi": m.oi, "oi_day_high": m.oi_day_high,
                "oi_day_low": m.oi_day_low, "net_change": round(m.last_price - m.close, 2) if m.close else 0,
                "lower_circuit_limit": round(m.close * 0.8, 2), "upper_circuit_limit": round(m.close * 1.2, 2),
                "ohlc": {"open": m.open, "high": m.high, "low": m.low, "close": m.close},
                "depth": m.depth(inst.tick_size) if not inst.is_index else {"buy": [], "sell": []}}
        return ok(data)

    def __repr__(self) -> str:
        urls = f"{self.rest_url} {self.ws_url}" if self.rest and self.ticker else "not started"
        return f"<FakeKite {urls} accounts={list(self.accounts)}>"


def _alnum(length: int) -> str:
    """Kite's request tokens are mixed-case alphanumerics."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _market_protection(raw: str | None, order_type: str) -> float:
    """Kite's 2026 rule: -1 (Kite's automatic protection) or a percentage in (0, 100]; 0 or absent means none,
    which MARKET and SL-M orders may no longer go without. Returns the value as sent (an int if whole)."""
    value = 0.0 if raw in (None, "") else _float(raw)
    if value is None or not (value in (-1, 0) or 0 < value <= 100):  # NaN fails every comparison: invalid
        raise _KiteError("InputException", "Invalid `market_protection`.")
    if value == 0 and order_type in ("MARKET", "SL-M"):
        raise _KiteError("InputException", MARKET_PROTECTION_REQUIRED)
    return int(value) if value.is_integer() else value
