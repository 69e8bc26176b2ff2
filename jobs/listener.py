"""The market listener: `python -m jobs.listener`. Knows every running strategy from Redis (the symbol
index, refreshed by "runtime changed" messages; the messages are numbered, and a gap, or a counter that went
back after a Redis wipe, triggers a full resync, as does a slow periodic timer, so a missed message heals),
keeps the feed subscribed to exactly the instruments they need, records last prices, and turns the first
breaching tick into one STOPLOSS event on the priority queue.

Ticks arrive on the feed's thread (on_ticks); everything else runs on the main thread."""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

import redis
from flask import Flask

from jobs.resilience import REDIS_DOWN, keep_running
from jobs.signals import stop_requested
from webapp import clock, create_app, keys, redis_client
from webapp.engine import dispatch
from webapp.engine.events import FAIL, STOPLOSS, Event, event_id
from webapp.engine.stop_index import StopIndex
from webapp.brokers import updates
from webapp.brokers.kite import order_state
from webapp.feeds import Instrument, MarketFeed, Tick, get_feed
from webapp.market_calendar import IST, exchange_date, is_trading_day, session_for
from webapp.state_machine import RUNNING, Status

log = logging.getLogger("listener")
PRICE_FLUSH_SECONDS = 0.1
CHART_SAMPLE_SECONDS = 2.0  # one chart point per symbol per 2 s: a trading day is ~11,000 points
CHART_MAX_POINTS = 12_000
CHART_TRIM_SECONDS = 60.0  # trimming and expiring a series now and then keeps the flush to one write a symbol
SEQUENCE_CHECK_SECONDS = 1.0
HEARTBEAT_TTL_SECONDS = 10


@dataclass(frozen=True)
class Member:
    strategy_id: int
    instrument: Instrument
    stop: float
    status: str
    run_id: int


class Listener:
    def __init__(self, app: Flask, conn: redis.Redis, feed: MarketFeed) -> None:
        self.app = app
        self.conn = conn
        self.feed = feed
        self.lock = threading.Lock()  # guards the index and the tick bookkeeping across the two threads
        self.index = StopIndex()
        self.members: dict[int, Member] = {}
        self.holders: Counter[str] = Counter()  # members per instrument: what the feed must be subscribed to
        self.fired: set[str] = set()  # STOPLOSS event ids sent and not yet acted on
        self.subscribed: dict[str, Instrument] = {}
        self.subscribed_at: dict[str, float] = {}
        self.last_tick: dict[str, float] = {}
        self.pending_prices: dict[str, float] = {}
        self.stale: set[str] = set()
        self.sampled: dict[str, float] = {}
        self.trimmed: dict[str, float] = {}
        self.ticks = 0
        self.seq = 0  # the last "runtime changed" message applied, in sequence
        self.seq_seen_at_check = 0

    # --- the hot path (feed thread)

    def on_ticks(self, ticks: list[Tick]) -> None:
        breaches = []
        now = time.monotonic()
        with self.lock:
            self.ticks += len(ticks)
            for tick in ticks:
                key = tick.instrument.key
                self.pending_prices[key] = tick.price
                self.last_tick[key] = now
                for stop, strategy_id in self.index.pop_breached(key, tick.price):
                    breaches.append((strategy_id, tick, stop))
        if breaches:
            self._fire(breaches)

    def _fire(self, breaches: list[tuple[int, Tick, float]]) -> None:
        events, prices, armed = [], {}, []
        for strategy_id, tick, stop in breaches:
            member = self.members.get(strategy_id)
            if member is None:
                continue
            event = Event.for_run(STOPLOSS, strategy_id, member.run_id, price=f"{tick.price:.2f}")
            events.append(event)
            armed.append((event, tick.instrument.key, stop))
            prices[keys.last_price(tick.instrument.exchange, tick.instrument.symbol)] = tick.price
            self.fired.add(event.event_id)
            log.info("stop-loss breached", extra={"event": STOPLOSS, "strategy_id": strategy_id,
                                                  "event_id": event.event_id, "price": tick.price, "stop": stop})
        # One MULTI/EXEC: no worker can take the STOPLOSS before the breaching price is stored, so the
        # paper exchange fills the exit at that tick.
        try:
            pipe = self.conn.pipeline(transaction=True)
            for batch in dispatch.batches(events, dispatch.live_workers(self.conn)):
                dispatch.enqueue(self.conn, batch, pipeline=pipe)
            for key, price in prices.items():
                pipe.set(key, price)
            pipe.execute()
        except REDIS_DOWN as exc:
            # Not sent: the stops go back in the index, so the next breaching tick fires them again.
            log.error("stop-loss not sent: redis unavailable; re-armed", extra={
                "event": STOPLOSS, "strategy_ids": [e.strategy_id for e in events], "error": str(exc)})
            with self.lock:
                for event, key, stop in armed:
                    self.fired.discard(event.event_id)
                    self.index.add(key, event.strategy_id, stop)

    # --- what is running (main thread)

    def resync(self) -> None:
        """Rebuild everything from Redis: heals any missed START/STOP message. It reads every running
        strategy (20,000 reads at 10,000 strategies), so it runs when a message was missed, not routinely."""
        self.seq = int(self.conn.get(keys.RUNTIME_SEQUENCE) or 0)  # before reading: later changes arrive as messages
        symbol_keys = list(self.conn.scan_iter(keys.symbol_index_pattern(), count=1000))
        pipe = self.conn.pipeline(transaction=False)
        for key in symbol_keys:
            pipe.zrange(key, 0, -1, withscores=True)
        stops = {int(sid): score for members in pipe.execute() for sid, score in members}
        members = self._load(stops)
        with self.lock:
            self.members = members
            self.holders = Counter(m.instrument.key for m in members.values())
            self.index = StopIndex()
            for member in members.values():
                self._index(member)
        self.sync_subscriptions(publish=True)

    def _load(self, stops: dict[int, float]) -> dict[int, Member]:
        ids = list(stops)
        pipe = self.conn.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(keys.strategy(sid), "exchange", "symbol", "instrument_token", "run_id")
            pipe.hget(keys.runtime(sid), "status")
        replies = pipe.execute()
        members = {}
        for n, sid in enumerate(ids):
            (exchange, symbol, token, run), status = replies[2 * n], replies[2 * n + 1]
            if not (exchange and symbol and run and status):
                continue  # being started or stopped right now; the next message or resync settles it
            members[sid] = Member(sid, Instrument(exchange.decode(), symbol.decode(), int(token or 0)), stops[sid],
                                  status.decode(), int(run))
        return members

    def _index(self, member: Member) -> None:
        """Caller holds the lock. Only a held position can be stopped out, and only once per run."""
        fired = event_id(STOPLOSS, member.strategy_id, member.run_id) in self.fired
        if member.status == Status.IN_POSITION and not fired:
            self.index.add(member.instrument.key, member.strategy_id, member.stop)
        else:
            self.index.remove(member.instrument.key, member.strategy_id)

    def on_message(self, message: dict) -> None:
        seq = int(message.get("seq", 0))
        if seq <= self.seq and seq != 1:
            return  # already part of the last resync
        if seq != self.seq + 1:
            log.warning("runtime messages missed, resyncing", extra={"event": "listener_resync", "expected":
                                                                     self.seq + 1, "got": seq})
            self.resync()
            return
        self.seq = seq
        self.on_runtime_changed(message)

    def check_sequence(self) -> None:
        """Messages published before the last check have arrived by now; if the counter went past what was
        applied (a message lost on a dropped connection) or back (Redis wiped), rebuild."""
        current = int(self.conn.get(keys.RUNTIME_SEQUENCE) or 0)
        if current < self.seq or self.seq < self.seq_seen_at_check:
            log.warning("runtime messages missed, resyncing", extra={"event": "listener_resync", "applied": self.seq,
                                                                     "counter": current})
            self.resync()
            current = self.seq
        self.seq_seen_at_check = current

    def on_runtime_changed(self, message: dict) -> None:
        sid = int(message["strategy_id"])
        status = message.get("status")
        if status in {s.value for s in RUNNING}:
            known = self.members.get(sid)
            if known is not None and status == Status.IN_POSITION and known.instrument.symbol == message.get("symbol"):
                # The same run moved on (its BUY filled): instrument and stop are as loaded (a new run starts
                # as waiting_entry, and a missed message means a resync, never this). No read and no
                # subscription change: at the 09:15 herd this is a thousand messages in a second or two.
                with self.lock:
                    member = self.members[sid] = replace(known, status=status)
                    self._index(member)
                return
            score = self.conn.zscore(keys.symbol_strategies(message.get("symbol") or ""), sid) \
                if message.get("symbol") else None
            loaded = self._load({sid: score}) if score is not None else {}
            if not loaded:  # older message shape, or keys not yet written: the resync will settle it
                return
            member = loaded[sid]
            with self.lock:
                self._forget(sid)
                self.members[sid] = member
                self.holders[member.instrument.key] += 1
                self._index(member)
            if member.instrument.key not in self.subscribed:
                self.sync_subscriptions()
        else:
            with self.lock:
                member = self._forget(sid)
                self.fired = {e for e in self.fired if not e.startswith(f"{sid}:")}
            if member is not None and not self.holders[member.instrument.key]:
                self.sync_subscriptions()

    def _forget(self, sid: int) -> Member | None:
        """Caller holds the lock."""
        member = self.members.pop(sid, None)
        if member is not None:
            self.index.remove(member.instrument.key, sid)
            self.holders[member.instrument.key] -= 1
            if not self.holders[member.instrument.key]:
                del self.holders[member.instrument.key]
        return member

    def sync_subscriptions(self, publish: bool = False) -> None:
        """Subscribes and unsubscribes the feed to match the running strategies; writes the subscribed set to
        Redis when it changed or when asked (after a resync: Redis may have been wiped)."""
        with self.lock:
            wanted = {m.instrument.key: m.instrument for m in self.members.values()}
        new = [i for key, i in wanted.items() if key not in self.subscribed]
        gone = [i for key, i in self.subscribed.items() if key not in wanted]
        if not new and not gone and not publish:
            return
        if gone:
            self.feed.unsubscribe(gone)
            for instrument in gone:
                self.subscribed.pop(instrument.key, None)
                self.stale.discard(instrument.key)
            self.conn.hdel(keys.FEED_STALE, *(i.key for i in gone))
            log.info("unsubscribed", extra={"event": "feed_unsubscribe", "instruments": [i.key for i in gone]})
        if new:
            unknown = {i.key for i in self.feed.subscribe(new)}
            now = time.monotonic()
            for instrument in new:
                if instrument.key not in unknown:
                    self.subscribed[instrument.key] = instrument
                    self.subscribed_at[instrument.key] = now
            log.info("subscribed", extra={"event": "feed_subscribe", "instruments": [i.key for i in new]})
            if unknown:
                self._symbol_unavailable(unknown)
        pipe = self.conn.pipeline()
        pipe.delete(keys.LISTENER_SUBSCRIBED)
        if self.subscribed:
            pipe.sadd(keys.LISTENER_SUBSCRIBED, *self.subscribed)
        pipe.execute()

    def _symbol_unavailable(self, unknown: set[str]) -> None:
        events = [Event.for_run(FAIL, m.strategy_id, m.run_id, reason=f"symbol unavailable: the feed does not know "
                                f"{m.instrument.key}") for m in self.members.values() if m.instrument.key in unknown]
        for event in events:
            log.error("symbol unavailable", extra={"event": FAIL, "strategy_id": event.strategy_id,
                                                   "event_id": event.event_id, "reason": event.reason})
        for batch in dispatch.batches(events, dispatch.live_workers(self.conn)):
            dispatch.enqueue(self.conn, batch)

    # --- housekeeping (main thread)

    def flush_prices(self) -> None:
        with self.lock:
            prices, self.pending_prices = self.pending_prices, {}
        if not prices:
            return
        pipe = self.conn.pipeline(transaction=False)
        now = time.monotonic()
        stamp, day = int(clock.epoch() * 1000), exchange_date(clock.now()).isoformat()
        # One MSET for every price: at 500 symbols a flush is one command, not 500, every 100 ms.
        pipe.mset({keys.last_price(*key.split(":", 1)): price for key, price in prices.items()})
        for key, price in prices.items():
            if now - self.sampled.get(key, 0.0) >= CHART_SAMPLE_SECONDS:  # the chart's series, thinned
                self.sampled[key] = now
                series = keys.ticks(*key.split(":", 1), day)
                pipe.rpush(series, f"{stamp}:{price}")
                if now - self.trimmed.get(key, 0.0) >= CHART_TRIM_SECONDS:
                    self.trimmed[key] = now
                    pipe.ltrim(series, -CHART_MAX_POINTS, -1)
                    pipe.expire(series, 2 * 24 * 3600)
        recovered = [key for key in prices if key in self.stale]
        if recovered:
            pipe.hdel(keys.FEED_STALE, *recovered)
            self.stale.difference_update(recovered)
            log.info("feed recovered", extra={"event": "feed_recovered", "instruments": recovered})
        pipe.execute()

    def check_health(self) -> None:
        """During market hours, a subscribed instrument with no tick for FEED_STALE_SECONDS is marked
        stale (the UI shows it), logged, and resubscribed."""
        config = self.app.config
        now_ist = clock.now().astimezone(IST)
        in_session = (is_trading_day(now_ist.date(), config["TRADING_CALENDAR"])
                      and session_for(config["TRADING_CALENDAR"]).contains(now_ist.time()))
        now = time.monotonic()
        stale = [] if not in_session else [
            i for key, i in self.subscribed.items()
            if now - max(self.last_tick.get(key, 0.0), self.subscribed_at.get(key, 0.0)) > config["FEED_STALE_SECONDS"]]
        for instrument in stale:
            if instrument.key not in self.stale:
                self.stale.add(instrument.key)
                self.conn.hset(keys.FEED_STALE, instrument.key, clock.now().isoformat())
                log.warning("feed stale", extra={"event": "feed_stale", "instrument": instrument.key,
                                                 "seconds": config["FEED_STALE_SECONDS"]})
            self.subscribed_at[instrument.key] = now  # resubscribe, then give it the same time again
        if stale:
            self.feed.unsubscribe(stale)
            self.feed.subscribe(stale)
        self.conn.set(keys.LISTENER_HEARTBEAT, json.dumps({
            "time": clock.now().isoformat(), "subscribed": len(self.subscribed), "strategies": len(self.members),
            "in_position": len(self.index), "ticks": self.ticks, "stale": sorted(self.stale),
            "feed": getattr(self.feed, "health", {})}),
            ex=HEARTBEAT_TTL_SECONDS)

    def run(self, stop: list[bool]) -> None:
        # The wall-clock start, so a replayed script's ticks can be placed in time afterwards (make soak).
        log.info("feed started", extra={"event": "feed_start", "epoch": time.time()})
        self.feed.start(self.on_ticks)
        keep_running("listener", lambda: self._serve(stop), stop)
        self.feed.stop()
        try:
            self.flush_prices()
        except REDIS_DOWN:
            pass  # prices are only for display; the next listener writes fresh ones

    def _serve(self, stop: list[bool]) -> None:
        """Subscribes, rebuilds its view, then keeps it current; run again from the top after an outage."""
        messages = self.conn.pubsub(ignore_subscribe_messages=True)
        messages.subscribe(keys.RUNTIME_CHANNEL)
        self.resync()
        resync_every = self.app.config["LISTENER_RESYNC_SECONDS"]
        next_flush = next_health = time.monotonic()
        next_resync = next_flush + resync_every
        next_sequence_check = next_flush + SEQUENCE_CHECK_SECONDS
        while not stop:
            message = messages.get_message(timeout=PRICE_FLUSH_SECONDS)
            if message is not None:
                self.on_message(json.loads(message["data"]))
            now = time.monotonic()
            if now >= next_sequence_check:
                self.check_sequence()
                next_sequence_check = now + SEQUENCE_CHECK_SECONDS
            if now >= next_flush:
                self.flush_prices()
                next_flush = now + PRICE_FLUSH_SECONDS
            if now >= next_health:
                self.check_health()
                next_health = now + 1.0
            if now >= next_resync:
                self.resync()
                next_resync = now + resync_every
        messages.close()


def main() -> None:
    # Ticks and breaches run on the feed's thread beside the main thread's housekeeping; CPython's default
    # 5 ms GIL slice would let a price flush hold a breach back that long.
    sys.setswitchinterval(0.0005)
    stop = stop_requested()  # first: a SIGTERM while booting is a clean stop too
    app = create_app(process_name="listener")
    conn = redis_client.connect(app.config["REDIS_URL"])
    log.info("listener starting", extra={"event": "listener_start", "feed": app.config["FEED"]})
    feed = get_feed(app.config, on_order_update=lambda data: updates.publish(conn, order_state(data)))
    Listener(app, conn, feed).run(stop)
    log.info("listener stopped", extra={"event": "listener_stop"})


if __name__ == "__main__":
    main()
