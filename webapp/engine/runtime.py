"""Runtime state in Redis (DESIGN.md section 3): what the listener and the UI read while a strategy
runs. The database stays the truth; this is rebuilt from it, and written after it."""
from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation

import redis
from redis.client import Pipeline

from webapp import clock, keys, redis_client
from webapp.engine import exits
from webapp.models import Strategy


# Every field the engine keeps in runtime:{id}: recovery finds a hash corrupt without a state field, and rebuilds
# one without the exit levels (written before they existed). The levels are resolved at the entry fill; the
# listener adds trail_stop (the stop it has trailed to) and nothing else.
STATE_FIELDS = ("status", "position", "last_action", "entry_price", "exit_price", "status_reason", "needs_attention",
                "updated_at")
LEVEL_FIELDS = ("direction", "stop_price", "target_price", "trail_every", "trail_by", "breakeven_at")
TRAIL_STOP = "trail_stop"


def stop_in_force(fields: dict[str, str], direction: str) -> Decimal | None:
    """The stop a runtime hash says is in force: the tighter of the one resolved at entry and the one the
    listener trailed to (a trailed stop only ever tightens, but a hash rebuilt from the database loses it)."""
    stops = []
    for name in ("stop_price", TRAIL_STOP):
        try:
            stops.append(Decimal(fields[name]))
        except (KeyError, InvalidOperation):
            continue  # not set (before the entry fill), or unreadable: the other one, or the database's
    if not stops:
        return None
    return max(stops) if direction != exits.SHORT else min(stops)


def levels(strategy: Strategy) -> dict[str, str]:
    """The run's exit levels for the listener: resolved from the entry fill ('' before it)."""
    if strategy.entry_price is None:
        return {name: "" for name in LEVEL_FIELDS} | {"direction": strategy.direction}
    resolved = exits.resolve(strategy, strategy.entry_price)
    return resolved.to_fields() | {"stop_price": str(strategy.stop_price or resolved.stop),
                                   "target_price": "" if strategy.target_price is None and resolved.target is None
                                   else str(strategy.target_price or resolved.target)}


def _runtime_fields(strategy: Strategy) -> dict:
    return {
        **levels(strategy),
        "status": strategy.status,
        "position": strategy.position,
        "last_action": strategy.last_action or "",
        "entry_price": str(strategy.entry_price) if strategy.entry_price is not None else "",
        "exit_price": str(strategy.exit_price) if strategy.exit_price is not None else "",
        **_attention(strategy),
        "updated_at": clock.now().isoformat(),
    }


def _attention(strategy: Strategy) -> dict[str, str]:
    return {"status_reason": strategy.status_reason or "", "needs_attention": "1" if strategy.needs_attention else ""}


def activate(conn: redis.Redis, strategy: Strategy) -> None:
    """START: the static metadata, the runtime hash and the symbol index, in one round trip."""
    pipe = conn.pipeline()
    pipe.delete(keys.runtime(strategy.id))
    pipe.hset(keys.strategy(strategy.id), mapping={
        "user_id": strategy.user_id, "symbol": strategy.symbol, "exchange": strategy.exchange,
        "instrument_token": strategy.instrument_token or "", "quantity": strategy.quantity,
        "buy_time": strategy.buy_time, "sell_time": strategy.sell_time, "stop_loss": str(strategy.stop_loss),
        "direction": strategy.direction,
        "broker_account_id": strategy.broker_account_id or "", "run_date": strategy.run_date or "",
        "run_id": strategy.run_id or "",
    })
    pipe.hset(keys.runtime(strategy.id), mapping=_runtime_fields(strategy))
    # Which strategies watch a symbol; the listener reads their exit levels from the runtime hashes.
    pipe.zadd(keys.symbol_strategies(strategy.symbol), {str(strategy.id): 0})
    pipe.execute()
    publish(conn, strategy)


Client = redis.Redis | Pipeline  # a pipeline batches a whole engine batch's updates into one round trip


def update(conn: Client, strategy: Strategy, **extra: object) -> None:
    conn.hset(keys.runtime(strategy.id), mapping={**_runtime_fields(strategy), **extra})
    publish(conn, strategy)


# Only into a runtime hash that exists: a strategy that ended meanwhile must not get a half hash back.
_FLAG_IF_RUNNING = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'status_reason', ARGV[1], 'needs_attention', ARGV[2])
end
"""


def flag(conn: Client, strategy: Strategy) -> None:
    """The attention flag and its reason, and nothing else: the caller does not hold this strategy's lock."""
    fields = _attention(strategy)
    redis_client.script(conn, _FLAG_IF_RUNNING)(keys=[keys.runtime(strategy.id)], args=[
        fields["status_reason"], fields["needs_attention"]], client=conn)


def deactivate(conn: Client, strategy: Strategy) -> None:
    """A terminal state: nothing about this strategy may remain for the listener to act on."""
    conn.zrem(keys.symbol_strategies(strategy.symbol), str(strategy.id))
    conn.delete(keys.strategy(strategy.id), keys.runtime(strategy.id))
    publish(conn, strategy)


def read_with_price(conn: redis.Redis, strategy: Strategy) -> tuple[dict[str, str], str | None]:
    """The runtime hash and the symbol's last tick (kept per symbol by the listener, not per strategy,
    so a tick costs one write however many strategies hold that symbol), in one round trip."""
    pipe = conn.pipeline(transaction=False)
    pipe.hgetall(keys.runtime(strategy.id))
    pipe.get(keys.last_price(strategy.exchange, strategy.symbol))
    raw, tick = pipe.execute()
    return {k.decode(): v.decode() for k, v in raw.items()}, tick.decode() if tick else None


# Numbered and sent in one step: messages then arrive in sequence order, so a listener that sees a gap
# (or a counter that went back, as after a Redis wipe) knows it missed one and rebuilds its view.
_PUBLISH_NUMBERED = """
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], '{"seq": ' .. seq .. ', ' .. string.sub(ARGV[2], 2))
return seq
"""


# A running strategy's status in one round trip and no database read: its owner (checked by the caller),
# the runtime hash and its symbol's last price, whose key is built here from the static hash.
_READ_STATUS = """
local owner, exchange, symbol = unpack(redis.call('HMGET', KEYS[1], 'user_id', 'exchange', 'symbol'))
if not owner then return nil end
local price_key = string.gsub(string.gsub(ARGV[1], '{exchange}', exchange), '{symbol}', symbol)
return {owner, redis.call('HGETALL', KEYS[2]), redis.call('GET', price_key)}
"""


def read_running(conn: redis.Redis, strategy_id: int) -> tuple[int, dict[str, str], str | None] | None:
    """(owner's user id, runtime hash, last price) of a running strategy, or None when it is not running."""
    reply = redis_client.script(conn, _READ_STATUS)(
        keys=[keys.strategy(strategy_id), keys.runtime(strategy_id)],
        args=[keys.last_price("{exchange}", "{symbol}")], client=conn)
    if not reply or not reply[1]:
        return None
    owner, flat, tick = reply
    fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
    return int(owner), fields, tick.decode() if tick else None


def publish(conn: Client, strategy: Strategy) -> None:
    """"Runtime changed": how the listener learns what to watch without a restart."""
    redis_client.script(conn, _PUBLISH_NUMBERED)(keys=[keys.RUNTIME_SEQUENCE], args=[keys.RUNTIME_CHANNEL, json.dumps({
        "strategy_id": strategy.id, "user_id": strategy.user_id, "symbol": strategy.symbol, "status": strategy.status,
        "position": strategy.position, "last_action": strategy.last_action,
    })], client=conn)
