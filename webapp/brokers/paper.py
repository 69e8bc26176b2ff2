"""The paper broker: a simulated exchange behind the Broker interface, so paper mode is a setting and
never a second code path in the engine. It behaves like Kite in the ways that matter for money: every
call takes PAPER_LATENCY_MS (half on the way in, half on the way back), a MARKET order is OPEN for
PAPER_FILL_MS before it fills, and a fault script can make the exchange fill part of an order and cancel
the rest, reject it, or answer 500. Its book lives in Redis so every worker sees the same orders. An
order fills at the last tick the listener stored when it arrived (or the catalogue's reference price),
moved against the trader by the configured slippage. A LIMIT order fills (after PAPER_FILL_MS, at the
last price or its limit, whichever is better for the trader) once the last price is at or through its limit,
checked by the fill timer and on every status read; otherwise it stays OPEN until it is modified to MARKET,
and then fills like a MARKET order at the price of that moment. Fills are pushed (brokers/updates.py) as Kite's
postbacks are, and settled on a status call too, so a fill is never lost with the process that timed it."""
from __future__ import annotations

import heapq
import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import time as dt_time
from decimal import Decimal

import redis
from redis.client import Pipeline

from webapp import clock, instruments, keys, process_local, redis_client
from webapp.market_calendar import IST
from webapp.brokers import updates
from webapp.brokers.ratelimit import RateLimiter
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

# Kite issues alphanumeric keys; paper mode checks the same shapes so a user's real credentials pass
# here and typos are caught before Kite is switched on.
_FIELD_RULES = {
    "api_key": (re.compile(r"^[A-Za-z0-9]{6,64}$"), "6–64 letters or digits"),
    "api_secret": (re.compile(r"^[A-Za-z0-9]{8,64}$"), "8–64 letters or digits"),
    "access_token": (re.compile(r"^[A-Za-z0-9]{8,64}$"), "8–64 letters or digits"),
}
ORDER_TTL_SECONDS = 3 * 24 * 3600
PAISE = Decimal("0.01")

# Faults an operator (or a test) queues with RPUSH on keys.paper_faults(), one per placement:
# - unavailable: HTTP 503 before the order is taken; timeout / error500: no usable answer, nothing booked;
# - timeout_after_accept: booked, then no answer; slow_after_accept: booked, answer SLOW_ANSWER_SECONDS late
#   (a window in which a drill kills the worker between the broker's accept and the engine's records);
# - reject: RMS rejection; auth: session expired; partial:N: N filled, the rest cancelled by the exchange.
# And on keys.paper_followup_faults(), one per follow-up call (status, look-up by tag, modification,
# cancellation): error500 (the call answers HTTP 500) or auth (the session expired: HTTP 403). A fault may name
# the one kind of call it is for, "status:", "modify:" or "cancel:" (e.g. modify:error500): it then waits at the
# head of the list for that kind of call, and the others pass it by. A LIMIT order with partial:N fills N when
# its limit is reached and leaves the rest OPEN (thin liquidity at the limit) until it is modified to MARKET or
# cancelled.
SLOW_ANSWER_SECONDS = 5.0
# The follow-up fault at the head of the list, taken if it is for this kind of call (a fault naming no call is
# for every call). Prepended to each script that plays follow-up faults.
_FOLLOWUP_FAULT = """
local function followup_fault(key, call)
  local head = redis.call('LINDEX', key, 0)
  if not head then return false end
  local target, fault = string.match(head, '^(%a+):(.+)$')
  if target and target ~= call then return false end
  redis.call('LPOP', key)
  return fault or head
end
"""
PARTIAL_MESSAGE = "Order cancelled by the exchange: market protection range breached (partial fill)"
REJECT_MESSAGE = "RMS:Margin Exceeds, Required:0, Available:0 (injected)"

# Takes one order in one round trip: plays the next placement fault, numbers the order, and books it at the
# last tick the listener stored (else the catalogue's price). The fill price is worked out from that arrival
# price in Python (Decimal), when the order's state is read. KEYS: faults, sequence, last price. ARGV: day
# (yymmdd), TTL, catalogue price ('' if none), reject message, partial message, order key prefix, tag list key, then the
# order's own fields as name/value pairs. Returns {fault or 'ok', order id or '', status}.
_PLACE = """
local fault = redis.call('LPOP', KEYS[1]) or 'ok'
if fault == 'unavailable' or fault == 'timeout' or fault == 'error500' or fault == 'auth' then
  return {fault, '', ''}
end
local arrival = redis.call('GET', KEYS[3]) or ARGV[3]
if arrival == '' then return {'unknown', '', ''} end
local order_id = ARGV[1] .. string.format('%09d', redis.call('INCR', KEYS[2]))
local key = ARGV[6] .. order_id
local quantity = 0
for i = 8, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  if ARGV[i] == 'quantity' then quantity = tonumber(ARGV[i + 1]) end
end
local status, planned, filled, message = 'OPEN', 'COMPLETE', quantity, ''
if fault == 'reject' then
  status, planned, filled, message = 'REJECTED', 'REJECTED', 0, ARGV[4]
elseif string.sub(fault, 1, 8) == 'partial:' then
  planned, filled = 'CANCELLED', math.min(tonumber(string.sub(fault, 9)), quantity)
end
redis.call('HSET', key, 'status', status, 'filled_quantity', 0, 'message', message,
  'arrival_price', arrival, 'planned_status', planned, 'planned_filled', filled,
  'planned_message', planned == 'CANCELLED' and ARGV[5] or message)
redis.call('EXPIRE', key, tonumber(ARGV[2]))
redis.call('RPUSH', ARGV[7], order_id)
redis.call('EXPIRE', ARGV[7], tonumber(ARGV[2]))
return {fault, order_id, status}
"""

# Settles an order whose fill time has come, atomically and idempotently, moves the account's net position
# by what filled, and plays a follow-up fault. A MARKET order takes its planned outcome (a fault's partial
# fill or the whole quantity); a LIMIT order fills only while the last price (else its reference price) is at
# or through its limit, and a LIMIT that filled in part before it was turned to MARKET fills the rest.
# KEYS: order hash, follow-up faults. ARGV: now in ms, '1' on a follow-up call, the positions key without
# its account id. Returns {fault or false, [status, tag, filled_quantity, arrival_price, message, side,
# slippage, limit_qty, limit_ltp, limit_price, order_type]} (only what an OrderState needs: replies are parsed in Python,
# and the whole hash is three times as long).
_SETTLE = _FOLLOWUP_FAULT + """
local fault = false
if ARGV[2] == '1' then fault = followup_fault(KEYS[2], 'status') end
local o = redis.call('HMGET', KEYS[1], 'status', 'fill_at', 'order_type', 'side', 'exchange', 'symbol', 'product',
  'account_id', 'quantity', 'filled_quantity', 'limit_price', 'price_key', 'reference_price', 'limit_qty',
  'arrival_price')
if o[1] == 'OPEN' and tonumber(ARGV[1]) >= tonumber(o[2]) then
  local moved = 0
  if o[3] == 'LIMIT' then
    if not o[14] then
      local ltp = redis.call('GET', o[12]) or (o[13] ~= '' and o[13]) or o[15]
      local limit = tonumber(o[11])
      if (o[4] == 'BUY' and tonumber(ltp) <= limit) or (o[4] ~= 'BUY' and tonumber(ltp) >= limit) then
        local planned = redis.call('HMGET', KEYS[1], 'planned_status', 'planned_filled')
        local qty = tonumber(o[9])
        if planned[1] == 'CANCELLED' then qty = tonumber(planned[2]) end
        redis.call('HSET', KEYS[1], 'limit_qty', qty, 'limit_ltp', ltp, 'filled_quantity', qty)
        if qty >= tonumber(o[9]) then redis.call('HSET', KEYS[1], 'status', 'COMPLETE') end
        moved = qty
      end
    end
  elseif tonumber(o[10] or '0') > 0 then
    redis.call('HSET', KEYS[1], 'status', 'COMPLETE', 'filled_quantity', o[9])
    moved = tonumber(o[9]) - tonumber(o[10])
  else
    local planned = redis.call('HMGET', KEYS[1], 'planned_status', 'planned_filled', 'planned_message')
    redis.call('HSET', KEYS[1], 'status', planned[1], 'filled_quantity', planned[2], 'message', planned[3])
    moved = tonumber(planned[2])
  end
  if moved > 0 then
    redis.call('HINCRBY', ARGV[3] .. o[8], o[5] .. ':' .. o[6] .. ':' .. o[7], o[4] == 'BUY' and moved or -moved)
  end
end
return {fault, redis.call('HMGET', KEYS[1], 'status', 'tag', 'filled_quantity', 'arrival_price', 'message', 'side',
  'slippage', 'limit_qty', 'limit_ltp', 'limit_price', 'order_type')}
"""

# Turns a working order into a MARKET order (Kite's modify_order with order_type MARKET): it then fills like
# one, PAPER_FILL_MS later, at the last price of this moment. A follow-up call: plays a follow-up fault.
# KEYS: order hash, follow-up faults. ARGV: now in ms, fill delay in ms, market protection. Returns
# {'ok' | 'final' | 'missing' | 'error500' | 'auth', status}.
_MODIFY = _FOLLOWUP_FAULT + """
local fault = followup_fault(KEYS[2], 'modify')
if fault == 'error500' or fault == 'auth' then return {fault, ''} end
local o = redis.call('HMGET', KEYS[1], 'status', 'price_key', 'reference_price', 'arrival_price')
if not o[1] then return {'missing', ''} end
if o[1] ~= 'OPEN' then return {'final', o[1]} end
local arrival = (o[2] and redis.call('GET', o[2])) or (o[3] and o[3] ~= '' and o[3]) or o[4]
redis.call('HSET', KEYS[1], 'order_type', 'MARKET', 'market_protection', ARGV[3], 'arrival_price', arrival,
  'fill_at', tonumber(ARGV[1]) + tonumber(ARGV[2]), 'modified', '1')
return {'ok', 'OPEN'}
"""

# Cancels a working order (Kite's cancel_order): what filled stays filled (the position moved with each fill),
# the rest is cancelled. A follow-up call: plays a follow-up fault. KEYS: order hash, follow-up faults.
# Returns {'ok' | 'final' | 'missing' | 'error500' | 'auth', status}.
_CANCEL = _FOLLOWUP_FAULT + """
local fault = followup_fault(KEYS[2], 'cancel')
if fault == 'error500' or fault == 'auth' then return {fault, ''} end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status ~= 'OPEN' then return {'final', status} end
redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'message', '', 'cancelled', '1')
return {'ok', 'CANCELLED'}
"""


@dataclass(frozen=True)
class Timing:
    latency_ms: float = 0.0  # one round trip, like Kite's 30–100 ms
    fill_ms: float = 0.0  # how long a MARKET order stays OPEN

    def leg(self) -> None:
        """Half a round trip, with Kite-like jitter (±40%)."""
        if self.latency_ms > 0:
            time.sleep(self.latency_ms * random.uniform(0.6, 1.4) / 2000)


class PaperBroker:
    name = "paper"

    def __init__(self, conn: redis.Redis | None = None, account_id: int = 0, slippage_bps: Decimal = Decimal(0),
                 timing: Timing = Timing(), limiter: RateLimiter | None = None,
                 mis_square_off: dt_time | None = None) -> None:
        """mis_square_off: the IST time at which the exchange closes every MIS position itself, as Kite does
        at its intraday cut-off (None: never)."""
        self.conn = conn
        self.account_id = account_id
        self.slippage = slippage_bps / Decimal(10000)
        self.timing = timing
        self.limiter = limiter
        self.mis_square_off = mis_square_off

    def validate_credentials(self, credentials: Credentials) -> None:
        bad = [
            f"{field} must be {rule}"
            for field, (pattern, rule) in _FIELD_RULES.items()
            if not pattern.match(getattr(credentials, field) or "")
        ]
        if bad:
            raise BrokerAuthFailed("; ".join(bad))

    def net_quantity(self, exchange: str, symbol: str, product: str) -> int:
        self.timing.leg()
        key, field = keys.paper_positions(str(self.account_id)), f"{exchange}:{symbol}:{product}"
        if product == "MIS" and self.mis_square_off is not None and \
                clock.now().astimezone(IST).time() >= self.mis_square_off:
            self.conn.hdel(key, field)  # squared off by the exchange at the cut-off
        held = self.conn.hget(key, field)
        self.timing.leg()
        return int(held or 0)

    def last_price(self, exchange: str, symbol: str) -> Decimal:
        return self._price(exchange, symbol, self.conn.get(keys.last_price(exchange, symbol)))

    def quotes(self, names: list[str]) -> dict[str, Decimal]:
        """Kite's ltp for the paper exchange: the last price of each instrument ("NSE:INFY") it would fill at,
        in one round trip, under the same quote limit. An instrument it does not list is left out."""
        if self.limiter is not None:
            try:
                self.limiter.acquire(f"paper{self.account_id}", "quote")
            except (TimeoutError, redis.RedisError) as exc:
                raise BrokerUnavailable(f"rate limiter: {exc}") from exc
        self.timing.leg()
        pairs = [name.split(":", 1) for name in names]
        ticks = self.conn.mget([keys.last_price(exchange, symbol) for exchange, symbol in pairs]) if pairs else []
        self.timing.leg()
        prices = {}
        for name, (exchange, symbol), tick in zip(names, pairs, ticks):
            try:
                prices[name] = self._price(exchange, symbol, tick)
            except OrderRejected:
                continue
        return prices

    @staticmethod
    def _price(exchange: str, symbol: str, tick: bytes | None) -> Decimal:
        if tick is not None:
            return Decimal(tick.decode())
        instrument = instruments.lookup(exchange, symbol)
        if instrument is None:
            raise OrderRejected(f"{exchange}:{symbol} is not an instrument of the paper exchange")
        return instrument.last_price

    def place_order(self, order: OrderRequest) -> str:
        limit = order.order_type == LIMIT
        if limit and (order.price is None or order.price <= 0):
            raise OrderRejected("Invalid `price`.")
        if not limit and order.market_protection != -1 and not 0 < order.market_protection <= 100:
            raise OrderRejected("Market orders without market protection are not allowed via API. Please set market "
                                "protection or use a Limit order.")
        reference = instruments.lookup(order.exchange, order.symbol)
        if self.limiter is not None:
            try:
                self.limiter.acquire(f"paper{self.account_id}", "orders")
            except (TimeoutError, redis.RedisError) as exc:  # nothing was sent
                raise BrokerUnavailable(f"rate limiter: {exc}") from exc
        self.timing.leg()
        now = clock.now()
        epoch = now.timestamp()
        fault, order_id, status = (x.decode() for x in redis_client.script(self.conn, _PLACE)(
            keys=[keys.paper_faults(), keys.paper_sequence(), keys.last_price(order.exchange, order.symbol)],
            args=[f"{now:%y%m%d}", ORDER_TTL_SECONDS, str(reference.last_price) if reference else "", REJECT_MESSAGE, PARTIAL_MESSAGE,
                  keys.paper_order(""), keys.paper_tag(self.account_id, order.tag),
                  "tag", order.tag, "side", order.side, "quantity", order.quantity, "exchange", order.exchange,
                  "symbol", order.symbol, "product", order.product, "account_id", self.account_id,
                  "placed_at", now.isoformat(), "placed_epoch", f"{epoch:.6f}",
                  "fill_at", int(epoch * 1000 + self.timing.fill_ms), "slippage", str(self.slippage),
                  "market_protection", order.market_protection, "algo_id", order.algo_id or "",
                  "order_type", order.order_type, "limit_price", str(order.price) if limit else "",
                  "price_key", keys.last_price(order.exchange, order.symbol),
                  "reference_price", str(reference.last_price) if reference else ""],
            client=self.conn))
        if fault == "unavailable":
            raise BrokerUnavailable("paper exchange: HTTP 503 (injected)")
        if fault == "timeout":
            raise BrokerTimeout("paper exchange: read timed out before the order was taken (injected)")
        if fault == "error500":
            raise BrokerTimeout("paper exchange: HTTP 500 on placement (injected)")
        if fault == "auth":
            raise BrokerAuthFailed("paper exchange: session expired (injected)")
        if fault == "unknown":
            raise OrderRejected(f"{order.exchange}:{order.symbol} is not an instrument of the paper exchange")
        if status == "OPEN":
            _fills(self.conn).at(epoch + self.timing.fill_ms / 1000, order_id)
        if fault == "timeout_after_accept":
            raise BrokerTimeout("paper exchange: read timed out after the order was taken (injected)")
        if fault == "slow_after_accept":
            time.sleep(SLOW_ANSWER_SECONDS)
        self.timing.leg()
        return order_id

    def order_status(self, order_id: str) -> OrderState:
        self.timing.leg()
        state = settle(self.conn, order_id, followup=True)
        self.timing.leg()
        return state

    def modify_to_market(self, order_id: str, market_protection: float) -> None:
        if market_protection != -1 and not 0 < market_protection <= 100:
            raise OrderNotModifiable("Invalid `market_protection`.")
        self.timing.leg()
        now = clock.epoch()
        outcome, status = (x.decode() for x in redis_client.script(self.conn, _MODIFY)(
            keys=[keys.paper_order(order_id), keys.paper_followup_faults()],
            args=[int(now * 1000), int(self.timing.fill_ms),
                  int(market_protection) if float(market_protection).is_integer() else market_protection],
            client=self.conn))
        _followup_outcome(outcome, order_id)
        if outcome == "final":
            raise OrderNotModifiable(f"Order cannot be modified as it is {status.lower()}.")
        _fills(self.conn).at(now + self.timing.fill_ms / 1000, order_id)
        self.timing.leg()

    def cancel_order(self, order_id: str) -> None:
        """Kite's cancel_order: an OPEN order is CANCELLED, keeping what filled; a final one is refused as Kite
        refuses it. A fill that is due is made first (the exchange matched it before the cancel arrived)."""
        self.timing.leg()
        _settle_call(self.conn, order_id, False, self.conn)
        outcome, status = (x.decode() for x in redis_client.script(self.conn, _CANCEL)(
            keys=[keys.paper_order(order_id), keys.paper_followup_faults()], args=[], client=self.conn))
        _followup_outcome(outcome, order_id)
        if outcome == "final":
            raise OrderNotCancellable(f"Order cannot be cancelled as it is {status.lower()}.")
        updates.publish_many(self.conn, [settle(self.conn, order_id)])  # pushed, as Kite's postback is
        self.timing.leg()

    def orders_by_tag(self, tag: str) -> list[OrderState]:
        self.timing.leg()
        ids = self.conn.lrange(keys.paper_tag(self.account_id, tag), 0, -1)
        found = [settle(self.conn, order_id.decode(), followup=True) for order_id in ids]
        self.timing.leg()
        return found


def _followup_outcome(outcome: str, order_id: str) -> None:
    """A follow-up script's injected fault or missing order, raised as Kite's client would meet it."""
    if outcome == "error500":
        raise BrokerUnavailable("paper exchange: HTTP 500 on a follow-up call (injected)")
    if outcome == "auth":
        raise BrokerAuthFailed("paper exchange: session expired (injected)")
    if outcome == "missing":
        raise BrokerUnavailable(f"paper exchange has no order {order_id}")


def settle(conn: redis.Redis, order_id: str, followup: bool = False) -> OrderState:
    return _state(order_id, *_settle_call(conn, order_id, followup, conn))


def _settle_call(conn: redis.Redis, order_id: str, followup: bool, client: redis.Redis | Pipeline) -> list:
    return redis_client.script(conn, _SETTLE)(
        keys=[keys.paper_order(order_id), keys.paper_followup_faults()],
        args=[int(clock.epoch() * 1000), "1" if followup else "0", keys.paper_positions("")], client=client)


def _state(order_id: str, fault: bytes | None, fields: list[bytes | None]) -> OrderState:
    if fault in (b"error500", b"auth"):
        _followup_outcome(fault.decode(), order_id)
    status, tag, filled, arrival, message, side, slippage, limit_qty, limit_ltp, limit_price, order_type = (
        None if f is None else f.decode() for f in fields)
    if status is None:
        raise BrokerUnavailable(f"paper exchange has no order {order_id}")
    average = None
    filled = int(filled)
    if filled:  # each part at its price moved against the trader by the slippage; a LIMIT's part no worse
        move = Decimal(slippage) if side == "BUY" else -Decimal(slippage)
        at_limit = int(limit_qty or 0)
        value = Decimal(0)
        if at_limit:
            ltp = Decimal(limit_ltp) * (1 + move)
            value += at_limit * (min(ltp, Decimal(limit_price)) if side == "BUY" else max(ltp, Decimal(limit_price)))
        if filled > at_limit:
            value += (filled - at_limit) * Decimal(arrival) * (1 + move)
        average = (value / filled).quantize(PAISE)
    return OrderState(order_id=order_id, status=status, tag=tag, filled_quantity=filled, average_price=average,
                      message=message or None, order_type=order_type or None)


class _Fills:
    """Fills each OPEN order at its fill time and pushes the update, from one thread per process."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.due: list[tuple[float, str]] = []
        self.wake = threading.Condition()
        threading.Thread(target=self._run, name="paper-fills", daemon=True).start()

    def at(self, epoch: float, order_id: str) -> None:
        with self.wake:
            heapq.heappush(self.due, (epoch, order_id))
            self.wake.notify()

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.due or self.due[0][0] > clock.epoch():
                    self.wake.wait(self.due[0][0] - clock.epoch() if self.due else None)
                due = []
                while self.due and self.due[0][0] <= clock.epoch():
                    due.append(heapq.heappop(self.due)[1])
            # Every order due now in one round trip, and their updates in one more: at the 09:15 herd a
            # round trip per fill would make the last fill of the second wait behind all the others.
            try:
                pipe = self.conn.pipeline(transaction=False)
                for order_id in due:
                    _settle_call(self.conn, order_id, False, pipe)
                updates.publish_many(self.conn, [_state(order_id, *reply)
                                                 for order_id, reply in zip(due, pipe.execute())])
            except (redis.RedisError, BrokerUnavailable):
                pass  # the engine's poll settles them instead


def _fills(conn: redis.Redis) -> _Fills:
    return process_local.one(("paper-fills", id(conn)), lambda: _Fills(conn))
