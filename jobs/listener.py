"""The market listener: `python -m jobs.listener`. Knows every running strategy from Redis (the symbol
index, refreshed by "runtime changed" messages; the messages are numbered, and a gap, or a counter that went
back after a Redis wipe, triggers a full resync, as does a slow periodic timer, so a missed message heals),
keeps the feed subscribed to exactly the instruments they need, records last prices, and turns the first
tick that crosses a held position's stop-loss into one STOPLOSS event on the priority queue, and the first
that reaches its target into one TARGET (the stop wins when one tick crosses both). A trailing stop moves
here, at tick speed, with the rules of webapp/engine/exits.py, and is written (coalesced, in the 100 ms price
flush) to the runtime hash's trail_stop and the run's stop-moves series.

A trailing stop is moved lazily. It always stays a known gap short of the best price reached (its initial
distance from the entry, or breakeven_at), so when the price passes its trailing level it only joins its
instrument's waiting stops (Waiting), whose best the following ticks carry along; the first tick that comes
back far enough from that best that one of them could be hit moves those to the best before it is checked.
A trend or a zigzag smaller than the stops' distance costs a comparison a tick; a flush works out where the
waiting stops stand, to write them. Terms under which a moved stop could reach the price itself (trail_by >
trail_every, a stop on the wrong side of the entry) move at once on every crossing instead.

A fired exit (STOPLOSS or TARGET) is not forgotten: a strategy still in position STOPLOSS_REFIRE_SECONDS later (its job lost in
a Redis wipe, its worker killed, the job failed) is fired again with the same event id while the price is
still at or beyond its level, the pause doubling up to STOPLOSS_REFIRE_MAX_SECONDS. The engine keeps that to
one exit: an exit already recorded makes a duplicate, and one in flight holds the strategy's lock.

An instrument held in position with no ticks for FEED_STALE_SECONDS (or no feed at all: Kite mode with no
market-data account) is priced by REST quotes instead (webapp/feeds/quotes.py) until ticks return.

Ticks arrive on the feed's thread (on_ticks), quotes on the poller's (on_quotes); everything else runs on
the main thread."""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Iterable

import redis
from flask import Flask

from jobs.resilience import REDIS_DOWN, keep_running
from jobs.signals import stop_requested
from webapp import clock, create_app, keys, live, metrics, redis_client
from webapp.engine import dispatch, exits, runtime
from webapp.engine import exit_index as ix
from webapp.engine.events import FAIL, STOPLOSS, TARGET, Event, event_id
from webapp.engine.exit_index import ExitIndex
from webapp.brokers import updates
from webapp.brokers.kite import order_state
from webapp.feeds import Instrument, MarketFeed, Tick, get_feed
from webapp.feeds import session as feed_session
from webapp.feeds.quotes import QuotePoller, Wanted
from webapp.market_calendar import IST, exchange_date, is_trading_day, session_for
from webapp.state_machine import RUNNING, Status

log = logging.getLogger("listener")
PRICE_FLUSH_SECONDS = 0.1
# Browsers get an instrument's changed price at least every PRICE_PUSH_SECONDS, and no sooner than
# PRICE_PUSH_EARLY_SECONDS after its last push: from then on a fresh tick (since the last round) goes out at
# once, so what a page shows is ~one flush old rather than as old as the instrument's tick interval.
PRICE_PUSH_SECONDS = 1.0
PRICE_PUSH_EARLY_SECONDS = 0.8
CHART_SAMPLE_SECONDS = 2.0  # one chart point per symbol per 2 s: a trading day is ~11,000 points
CHART_MAX_POINTS = 12_000
CHART_TRIM_SECONDS = 60.0  # trimming and expiring a series now and then keeps the flush to one write a symbol
SEQUENCE_CHECK_SECONDS = 1.0
HEARTBEAT_TTL_SECONDS = 10
STOP_MOVES_TTL_SECONDS = 2 * 24 * 3600
MOVES_PER_SCRIPT = 500  # moved stops written by one call of the write script (~2 ms of Redis)
# What the listener reads of a runtime hash: the run's exit levels (resolved by the engine at the entry
# fill, '' before it) and the stop it has trailed to itself.
LEVEL_FIELDS = ("entry_price", "direction", "stop_price", "target_price", "trail_every", "trail_by", "breakeven_at",
                runtime.TRAIL_STOP)


@dataclass(slots=True)
class Watch:
    """A held position's exits as the listener watches them, in floats (compared on every tick). Only the
    feed and quote threads change it, under the listener's lock."""
    direction: str
    entry: float
    initial: float  # the stop resolved at the entry fill
    stop: float  # the stop in force: the initial one, or where it has trailed to; it only ever tightens
    target: float | None
    trail_every: float | None
    trail_by: float | None
    breakeven_at: float | None
    best: float  # the furthest price in the trader's favour known since entry

    @property
    def trails(self) -> bool:
        return bool(self.trail_every and self.trail_by) or self.breakeven_at is not None


@dataclass(frozen=True)
class Member:
    strategy_id: int
    instrument: Instrument
    status: str
    run_id: int
    account_id: int | None  # its broker account: whose session may quote it when ticks stop
    user_id: int | None = None  # its owner: whose browsers get its instrument's live price
    watch: Watch | None = None  # None until the entry has filled (the levels are resolved from the fill)


@dataclass
class Fired:
    """A STOPLOSS or TARGET sent and not yet seen through (the strategy is still in position)."""
    event: Event
    key: str  # its instrument
    direction: str
    level: float  # the stop or the target it crossed
    attempt: int  # 1: the first fire
    due: float  # monotonic: from then on it is fired again while the price is at or beyond the level


MARGIN = 0.01  # a moved stop is rounded to the paisa: the bound below is kept a paisa wide


@dataclass(slots=True)
class Waiting:
    """One instrument's trailing stops of one direction that the price carried along and that are not moved
    yet. Since each joined, `best` is the furthest the price has gone in their favour (it joins at a new
    best); a stop stays at least its gap short of best, so none can be hit before the price comes back
    `gap` (the smallest) from it. Until then they cost nothing a tick."""
    sign: int  # +1 longs (best is the high), -1 shorts (the low)
    best: float
    stops: dict[int, float]  # strategy → its gap
    gap: float


def _gap(watch: Watch) -> float | None:
    """How far short of the best price the stop always stays, or None: it could reach the price itself, so
    it moves at once. A stop trails at most trail_by for each trail_every in favour, so with trail_by ≤
    trail_every it stays (entry − initial stop) behind; at breakeven it is breakeven_at behind."""
    gap = (watch.entry - watch.initial) * exits.sign(watch.direction)
    if gap <= 0 or (watch.trail_every and watch.trail_by and watch.trail_by > watch.trail_every):
        return None
    if watch.breakeven_at is not None:
        if watch.breakeven_at <= 0:
            return None
        gap = min(gap, watch.breakeven_at)
    return gap


def _float(raw: bytes | None) -> float | None:
    return float(raw) if raw else None


def _watch(raw: list[bytes | None], fallback_stop: bytes | None) -> Watch | None:
    """From a runtime hash's LEVEL_FIELDS: None before the entry fill. A hash written before exit levels
    existed (no stop_price field at all) was a long with a price stop: the strategy's stop_loss."""
    entry, direction, stop, target, every, by, breakeven, trailed = raw
    if stop is None and fallback_stop:
        stop, direction = fallback_stop, b"long"
    if not stop:
        return None
    direction_ = (direction or b"long").decode()
    initial = float(stop)
    entry_ = float(entry) if entry else initial
    watch = Watch(direction_, entry_, initial, initial, _float(target), _float(every), _float(by), _float(breakeven),
                  entry_)
    if trailed:
        # Moved before a restart: never loosened. The best price reached is at least what that move needed.
        watch.stop = exits.tighter(direction_, initial, float(trailed))
        if watch.trail_every and watch.trail_by:
            moves = int((watch.stop - initial) * exits.sign(direction_) / watch.trail_by + 1e-9)
            watch.best = entry_ + exits.sign(direction_) * max(0, moves) * watch.trail_every
    return watch


def _merged(old: Member | None, new: Member) -> Member:
    """The same run read again from Redis: its stop stays as tight as this listener already had it (a move
    not yet flushed is newer than the hash)."""
    if old is None or old.watch is None or new.watch is None or old.run_id != new.run_id:
        return new
    watch, mine = new.watch, old.watch
    watch.stop = exits.tighter(watch.direction, watch.stop, mine.stop)
    if (mine.best - watch.best) * exits.sign(watch.direction) > 0:
        watch.best = mine.best
    return new


class Listener:
    def __init__(self, app: Flask, conn: redis.Redis, feed: MarketFeed) -> None:
        self.app = app
        self.conn = conn
        self.feed = feed
        self.lock = threading.Lock()  # guards the index and the price bookkeeping: feed, quote and main threads
        self.index = ExitIndex()
        self.members: dict[int, Member] = {}
        self.holders: Counter[str] = Counter()  # members per instrument: what the feed must be subscribed to
        self.owners: dict[str, Counter[int]] = defaultdict(Counter)  # instrument → its members' users: who sees it
        self.fired: dict[str, Fired] = {}  # by event id: exits sent for strategies still in position
        self.moved: dict[int, tuple[int, float, int]] = {}  # strategy → (run, stop, epoch ms): moves to write
        self.stops_due = 0.0  # monotonic: when the flush next writes moved stops
        self.written: dict[int, tuple[int, float]] = {}  # strategy → (run, stop) last written to Redis
        self.pending: dict[str, list[Waiting]] = {}  # instrument → trailing stops waiting for the price to turn
        self.subscribed: dict[str, Instrument] = {}
        self.subscribed_at: dict[str, float] = {}
        self.last_tick: dict[str, float] = {}
        self.prices: dict[str, float] = {}  # the last known price per instrument, from ticks or quotes
        self.pending_prices: dict[str, float] = {}
        self.ticked: set[str] = set()  # instruments the feed ticked since the last flush (quotes do not count)
        self.stale: dict[str, str] = {}  # instrument → ISO time since when no tick has come
        self.quoted: set[str] = set()  # stale instruments held in position: priced by quotes
        self.session: feed_session.FeedSession | None = None  # the Kite feed's, when FEED=kite
        self.quotes = QuotePoller(app, self.quote_wanted, self.on_quotes, lambda: self.session)
        self.pushed: dict[str, float] = {}  # the last price pushed to browsers, per instrument
        self.pushed_at: dict[str, float] = {}  # monotonic: when it was pushed
        self.push_round = float("-inf")  # monotonic: the last push_prices
        self.sampled: dict[str, float] = {}
        self.trimmed: dict[str, float] = {}
        self.ticks = 0
        self.seq = 0  # the last "runtime changed" message applied, in sequence
        self.seq_seen_at_check = 0

    # --- the hot path (feed thread)

    def on_ticks(self, ticks: list[Tick]) -> None:
        now = time.monotonic()
        found: list[tuple[Member, Tick, str, float]] = []
        metrics.inc(metrics.TICKS, amount=len(ticks))  # one write a batch, outside the index's lock
        with self.lock:
            self.ticks += len(ticks)
            pop, pending = self.index.pop_crossed, self.pending
            for tick in ticks:
                key = tick.instrument.key
                self.pending_prices[key] = self.prices[key] = tick.price
                self.last_tick[key] = now
                self.ticked.add(key)
                waits = pending.get(key) if pending else None
                if waits is not None:  # _ride, its common case (a new best) inline: this runs on every tick
                    for wait in waits:
                        if (wait.best - tick.price) * wait.sign <= 0:
                            wait.best = tick.price
                        else:
                            self._ride(key, waits, tick.price)
                            break
                crossed = pop(key, tick.price)  # nearly always [] at the cost of two comparisons
                if crossed:
                    self._crossed(tick, crossed, found)
        if found:
            self._fire(found, "tick")

    def on_quotes(self, ticks: list[Tick]) -> None:
        """Prices from REST quotes: they check exits as ticks do, but say nothing about the feed's health.
        One is stored only when it is news: a paper quote is read from the very key the listener writes."""
        with self.lock:
            for tick in ticks:
                key = tick.instrument.key
                if self.prices.get(key) != tick.price:
                    self.pending_prices[key] = self.prices[key] = tick.price
            found = self._check(ticks)
        if found:
            self._fire(found, "quote")

    def _check(self, ticks: Iterable[Tick]) -> list[tuple[Member, Tick, str, float]]:
        """Caller holds the lock."""
        found: list[tuple[Member, Tick, str, float]] = []
        for tick in ticks:
            wait = self.pending.get(tick.instrument.key)
            if wait is not None:
                self._ride(tick.instrument.key, wait, tick.price)
            crossed = self.index.pop_crossed(tick.instrument.key, tick.price)
            if crossed:
                self._crossed(tick, crossed, found)
        return found

    def _crossed(self, tick: Tick, crossed: list[tuple[int, int, float]],
                 found: list[tuple[Member, Tick, str, float]]) -> None:
        """Caller holds the lock. What a price crossed: a stop or a target is an exit (the stop first: one
        exit a run), a trailing level moves the stop (which that same price may then cross)."""
        kinds: dict[int, int] = {}
        for sid, kind, _ in crossed:
            kinds[sid] = kinds.get(sid, 0) | 1 << kind
        price = tick.price
        for sid, mask in kinds.items():
            member = self.members.get(sid)
            watch = member.watch if member is not None else None
            if watch is None:
                self.index.remove(sid)
                continue
            if mask & 1 << ix.STOP:
                hit = (STOPLOSS, watch.stop)
            elif mask & 1 << ix.TARGET:
                hit = (TARGET, watch.target)
            elif self._wait_for_turn(member, watch, price):
                continue
            else:
                self._move(member, watch, price)
                if not exits.stop_hit(watch.direction, price, watch.stop):
                    continue
                hit = (STOPLOSS, watch.stop)
            if hit[0] == TARGET:
                # The stop stays watched: should the TARGET's job be lost and the price turn, the stop must
                # still fire (the engine keeps it to one exit a run).
                self.index.discard(sid, ix.TARGET)
            else:
                self.index.remove(sid)
                self._unwait(member)
            found.append((member, tick, *hit))

    def _wait_for_turn(self, member: Member, watch: Watch, price: float) -> bool:
        """Caller holds the lock. The price passed a trailing level: the stop joins its instrument's waiting
        ones when it can wait (its trailing level stays out of the index till it is moved). False: move it
        now (it could reach the price, or the price is not at a new best for those already waiting)."""
        gap = _gap(watch)
        if gap is None:
            return False
        sign = exits.sign(watch.direction)
        waits = self.pending.get(member.instrument.key)
        wait = next((w for w in waits if w.sign == sign), None) if waits else None
        if wait is None:
            wait = Waiting(sign, price, {}, gap)
            self.pending.setdefault(member.instrument.key, []).append(wait)
        elif (price - wait.best) * sign < 0:
            return False  # their best is not this one's: it would be moved too far
        wait.best = price
        wait.stops[member.strategy_id] = gap
        wait.gap = min(wait.gap, gap)
        return True

    def _ride(self, key: str, waits: list[Waiting], price: float) -> None:
        """Caller holds the lock; before the price is checked against the index. A new best carries the
        waiting stops along; a price come back far enough that some could be hit moves those (to the best),
        so for that price the index is exact."""
        settled = False
        for wait in waits:
            back = (wait.best - price) * wait.sign
            if back <= 0:
                wait.best = price
            elif back >= wait.gap - MARGIN:
                self._settle(wait, back + MARGIN)
                settled = True
        if settled:
            waits[:] = [wait for wait in waits if wait.stops]
            if not waits:
                del self.pending[key]

    def _unwait(self, member: Member) -> None:
        """Caller holds the lock. The strategy's stop no longer waits (its exit fired, its run ended)."""
        waits = self.pending.get(member.instrument.key)
        if waits:
            for wait in waits:
                wait.stops.pop(member.strategy_id, None)
            if not all(wait.stops for wait in waits):
                waits[:] = [wait for wait in waits if wait.stops]
                if not waits:
                    del self.pending[member.instrument.key]

    def _settle(self, wait: Waiting, back: float) -> None:
        """Caller holds the lock. Moves the waiting stops that a price `back` from the best could reach."""
        stamp = int(clock.epoch() * 1000)
        for sid, gap in list(wait.stops.items()):
            if gap > back:
                continue
            del wait.stops[sid]
            member = self.members.get(sid)
            if member is not None and member.watch is not None and sid in self.index:
                self._move(member, member.watch, wait.best, stamp)
        wait.gap = min(wait.stops.values(), default=float("inf"))

    def _move(self, member: Member, watch: Watch, price: float, stamp: int | None = None) -> None:
        """Caller holds the lock. The price reached a trailing level: the stop moves (tighter only) and is
        indexed where it now is, beside the next level at which it moves again."""
        if (price - watch.best) * exits.sign(watch.direction) > 0:
            watch.best = price
        stop = round(exits.moved_stop(watch.direction, watch.entry, watch.initial, watch.stop, watch.best,
                                      watch.trail_every, watch.trail_by, watch.breakeven_at), 2)
        if stop != watch.stop and exits.tighter(watch.direction, stop, watch.stop) == stop:
            watch.stop = stop
            self.index.set(member.instrument.key, member.strategy_id, ix.STOP,
                           ix.RISE if watch.direction == exits.SHORT else ix.FALL, stop)
            self.moved[member.strategy_id] = (member.run_id, stop, stamp or int(clock.epoch() * 1000))
        self._index_trail(member, watch)

    def stop_of(self, strategy_id: int) -> float | None:
        """The stop in force for a held strategy, a move waiting for the turn included."""
        with self.lock:
            member = self.members.get(strategy_id)
            watch = member.watch if member is not None else None
            if watch is None:
                return None
            for wait in self.pending.get(member.instrument.key, ()):
                if strategy_id in wait.stops:
                    return round(exits.moved_stop(watch.direction, watch.entry, watch.initial, watch.stop, wait.best,
                                                  watch.trail_every, watch.trail_by, watch.breakeven_at), 2)
            return watch.stop

    def _moves_to_write(self, moved: dict[int, tuple[int, float, int]],
                        waiting: list[tuple[float, list[int]]]) -> list[tuple[int, int, float, int, int]]:
        """Main thread, without the lock: the moves made since the last flush and where the waiting stops
        stand now (`waiting`: each Waiting's best and strategies, copied under the lock; the index is left
        as it is, see _ride), each as (strategy, run, stop, epoch_ms, first) for the write script (first:
        the run's first point, which sets the series' time to live); a stop already written is not written
        again. Worked out under the lock, 10,000 stops held every tick back ~20 ms a flush."""
        written, members = self.written, self.members
        out = []
        for sid, (run, stop, stamp) in moved.items():
            last = written.get(sid)
            if last is None or last[1] != stop or last[0] != run:
                out.append((sid, run, stop, stamp, 1 if last is None or last[0] != run else 0))
                written[sid] = (run, stop)
        stamp = int(clock.epoch() * 1000)
        moved_stop = exits.moved_stop
        for best, sids in waiting:
            for sid in sids:
                member = members.get(sid)
                watch = member.watch if member is not None else None
                if watch is None:
                    continue
                stop = round(moved_stop(watch.direction, watch.entry, watch.initial, watch.stop, best,
                                        watch.trail_every, watch.trail_by, watch.breakeven_at), 2)
                last = written.get(sid)
                run = member.run_id
                if stop == watch.stop or (last is not None and last[1] == stop and last[0] == run):
                    continue
                out.append((sid, run, stop, stamp, 1 if last is None or last[0] != run else 0))
                written[sid] = (run, stop)
        return out

    def _catch_up(self, instruments: Iterable[Instrument]) -> None:
        """Levels just (re)indexed that the last known price already crossed act now, not on a next tick
        that may be long in coming (a quiet stock, or no feed): a stop or target fires, a trailing stop moves."""
        with self.lock:
            found = self._check([Tick(i, self.prices[i.key]) for i in instruments if i.key in self.prices])
        if found:
            self._fire(found, "last price")

    def _fire(self, found: list[tuple[Member, Tick, str, float]], source: str) -> None:
        events, prices, armed = [], {}, []
        due = time.monotonic() + self._refire_pause(1)
        with self.lock:
            for member, tick, kind, level in found:
                current = self.members.get(member.strategy_id)
                if current is None or current.run_id != member.run_id:
                    continue  # stopped (or started again) meanwhile
                event = Event.for_run(kind, member.strategy_id, member.run_id, price=f"{tick.price:.2f}")
                events.append(event)
                armed.append((event, member, level))
                prices[keys.last_price(tick.instrument.exchange, tick.instrument.symbol)] = tick.price
                self.fired[event.event_id] = Fired(event, tick.instrument.key, member.watch.direction, level, 1, due)
        for event, member, level in armed:
            log.info("stop-loss breached" if event.event == STOPLOSS else "target hit", extra={
                "event": event.event, "strategy_id": event.strategy_id, "event_id": event.event_id,
                "price": float(event.price), "stop" if event.event == STOPLOSS else "target": level,
                "direction": member.watch.direction, "source": source})
        if not self._send(events, prices):
            # Not sent: the levels go back in the index, so the next crossing price fires them again.
            log.error("exit not sent: redis unavailable; re-armed", extra={
                "event": "listener_exit_not_sent", "strategy_ids": [e.strategy_id for e in events]})
            with self.lock:
                for event, member, _ in armed:
                    self.fired.pop(event.event_id, None)
                    current = self.members.get(member.strategy_id)
                    if current is not None and current.run_id == member.run_id:
                        self._index(current)

    def _send(self, events: list[Event], prices: dict[str, float]) -> bool:
        """One MULTI/EXEC: no worker can take the exit before the crossing price is stored, so the
        paper exchange fills the exit at that price. False when Redis did not take it."""
        try:
            pipe = self.conn.pipeline(transaction=True)
            for batch in dispatch.batches(events, dispatch.live_workers(self.conn)):
                dispatch.enqueue(self.conn, batch, pipeline=pipe)
            for key, price in prices.items():
                pipe.set(key, price)
            pipe.execute()
        except REDIS_DOWN as exc:
            log.error("redis unavailable", extra={"event": "listener_send_failed", "error": str(exc)})
            return False
        return True

    def _refire_pause(self, attempt: int) -> float:
        """The pause after fire number `attempt`: 5, 10, 20, 40, 60, 60 ... s by default."""
        config = self.app.config
        return min(config["STOPLOSS_REFIRE_SECONDS"] * 2 ** (attempt - 1), config["STOPLOSS_REFIRE_MAX_SECONDS"])

    def _still_held(self, fired: Fired) -> bool:
        """Caller holds the lock. The strategy is in position in the run the exit was fired for."""
        member = self.members.get(fired.event.strategy_id)
        return member is not None and member.status == Status.IN_POSITION and member.run_id == fired.event.run_id

    def refire_due(self) -> None:
        """Fires again, with the same event id, every exit whose strategy is still in position past its
        pause while the last price is at or beyond its level. A price back inside fires nothing; the first
        price at or beyond the level again does, at once."""
        now = time.monotonic()
        again: list[tuple[Fired, float]] = []
        with self.lock:
            for event_id_, fired in list(self.fired.items()):
                if fired.due > now:
                    continue
                if not self._still_held(fired):
                    del self.fired[event_id_]
                    continue
                price = self.prices.get(fired.key)
                if price is None or not _beyond(fired, price):
                    continue
                fired.attempt += 1
                fired.due = now + self._refire_pause(fired.attempt)
                again.append((replace(fired), price))
        if not again:
            return
        prices = {}
        for fired, price in again:
            prices[keys.last_price(*fired.key.split(":", 1))] = price
            stoploss = fired.event.event == STOPLOSS
            log.warning(f"{'stop-loss' if stoploss else 'target'} fired again: still in position", extra={
                "event": fired.event.event, "strategy_id": fired.event.strategy_id, "event_id": fired.event.event_id,
                "attempt": fired.attempt, "price": price, "stop" if stoploss else "target": fired.level,
                "next_in_seconds": self._refire_pause(fired.attempt)})
        self._send([fired.event for fired, _ in again], prices)  # not sent: its next turn tries again

    # --- what is running (main thread)

    def resync(self) -> None:
        """Rebuild everything from Redis: heals any missed START/STOP message. It reads every running
        strategy (20,000 reads at 10,000 strategies), so it runs when a message was missed, not routinely."""
        self.seq = int(self.conn.get(keys.RUNTIME_SEQUENCE) or 0)  # before reading: later changes arrive as messages
        symbol_keys = list(self.conn.scan_iter(keys.symbol_index_pattern(), count=1000))
        pipe = self.conn.pipeline(transaction=False)
        for key in symbol_keys:
            pipe.zrange(key, 0, -1)
        members = self._load(list(dict.fromkeys(int(sid) for ids in pipe.execute() for sid in ids)))
        with self.lock:
            members = {sid: _merged(self.members.get(sid), member) for sid, member in members.items()}
            for sid, old in self.members.items():  # a stop waiting for the run that ended must not move the next
                if sid not in members or members[sid].run_id != old.run_id:
                    self._unwait(old)
            self.members = members
            # A fired stop is kept only for a strategy still in position in the same run: it fires again
            # when due. Any other (an exit recorded, a new run, keys wiped) would only block a fresh one.
            self.fired = {eid: fired for eid, fired in self.fired.items() if self._still_held(fired)}
            self.holders = Counter(m.instrument.key for m in members.values())
            self.owners = defaultdict(Counter)
            for m in members.values():
                self._own(m, 1)
            self.index = ExitIndex()
            for member in members.values():
                self._index(member)
        self.sync_subscriptions(publish=True)
        self._catch_up({m.instrument.key: m.instrument for m in members.values()
                        if m.status == Status.IN_POSITION}.values())

    def _load(self, ids: list[int]) -> dict[int, Member]:
        pipe = self.conn.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(keys.strategy(sid), "exchange", "symbol", "instrument_token", "run_id", "broker_account_id",
                       "stop_loss", "user_id")
            pipe.hmget(keys.runtime(sid), "status", *LEVEL_FIELDS)
        replies = pipe.execute()
        members = {}
        for n, sid in enumerate(ids):
            (exchange, symbol, token, run, account, stop_loss, owner), (status, *levels) = \
                replies[2 * n], replies[2 * n + 1]
            if not (exchange and symbol and run and status):
                continue  # being started or stopped right now; the next message or resync settles it
            members[sid] = Member(sid, Instrument(exchange.decode(), symbol.decode(), int(token or 0)),
                                  status.decode(), int(run), int(account) if account else None,
                                  int(owner) if owner else None, _watch(levels, stop_loss))
        return members

    def _read_watch(self, sid: int) -> Watch | None:
        """One strategy's levels, one round trip: its BUY filled, so the engine has just resolved them."""
        raw = self.conn.hmget(keys.runtime(sid), *LEVEL_FIELDS)
        return _watch(raw, None) if raw[2] is not None else None

    def _fired(self, member: Member, kind: str) -> bool:
        """Caller holds the lock."""
        return event_id(kind, member.strategy_id, member.run_id) in self.fired

    def _index(self, member: Member) -> None:
        """Caller holds the lock. Only a held position can exit; an exit that already fired is left to
        refire_due, not fired again by every tick. A fired TARGET leaves the stop watched."""
        watch = member.watch
        sid = member.strategy_id
        if member.status != Status.IN_POSITION or watch is None or self._fired(member, STOPLOSS):
            self.index.remove(sid)
            return
        key, short = member.instrument.key, watch.direction == exits.SHORT
        self.index.set(key, sid, ix.STOP, ix.RISE if short else ix.FALL, watch.stop)
        if watch.target is not None and not self._fired(member, TARGET):
            self.index.set(key, sid, ix.TARGET, ix.FALL if short else ix.RISE, watch.target)
        else:
            self.index.discard(sid, ix.TARGET)
        self._index_trail(member, watch)

    def _index_trail(self, member: Member, watch: Watch) -> None:
        """Caller holds the lock. The price at which the stop next moves, if it ever does."""
        at = exits.next_move_at(watch.direction, watch.entry, watch.stop, watch.best, watch.trail_every,
                                watch.trail_by, watch.breakeven_at) if watch.trails else None
        if at is None:
            self.index.discard(member.strategy_id, ix.TRAIL)
        else:
            self.index.set(member.instrument.key, member.strategy_id, ix.TRAIL,
                           ix.FALL if watch.direction == exits.SHORT else ix.RISE, at)

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
                # The same run moved on (its entry filled): the instrument is as loaded (a new run starts as
                # waiting_entry, and a missed message means a resync, never this); the levels the engine
                # resolved from the fill are one HMGET. No subscription change: at the 09:15 herd this is
                # a thousand messages in a second or two.
                watch = self._read_watch(sid)
                with self.lock:
                    member = self.members[sid] = _merged(self.members.get(sid, known),
                                                         replace(known, status=status, watch=watch))
                    self._index(member)
                self._catch_up([member.instrument])
                return
            score = self.conn.zscore(keys.symbol_strategies(message.get("symbol") or ""), sid) \
                if message.get("symbol") else None
            loaded = self._load([sid]) if score is not None else {}
            if not loaded:  # older message shape, or keys not yet written: the resync will settle it
                return
            with self.lock:
                member = _merged(self.members.get(sid), loaded[sid])
                self._forget(sid)
                self.members[sid] = member
                self.holders[member.instrument.key] += 1
                self._own(member, 1)
                self._index(member)
            if member.instrument.key not in self.subscribed:
                self.sync_subscriptions()
            if member.status == Status.IN_POSITION:
                self._catch_up([member.instrument])
        else:
            with self.lock:
                member = self._forget(sid)
                self.fired = {e: f for e, f in self.fired.items() if f.event.strategy_id != sid}
            if member is not None and not self.holders[member.instrument.key]:
                self.sync_subscriptions()

    def _forget(self, sid: int) -> Member | None:
        """Caller holds the lock."""
        member = self.members.pop(sid, None)
        if member is not None:
            self.index.remove(sid)
            self._unwait(member)
            self.written.pop(sid, None)
            self.holders[member.instrument.key] -= 1
            if not self.holders[member.instrument.key]:
                del self.holders[member.instrument.key]
            self._own(member, -1)
        return member

    def _own(self, member: Member, change: int) -> None:
        """Caller holds the lock. Counts the member's user in as a viewer of its instrument's price, or out."""
        if member.user_id is None:
            return
        users = self.owners[member.instrument.key]
        users[member.user_id] += change
        if users[member.user_id] <= 0:
            del users[member.user_id]
        if not users:
            del self.owners[member.instrument.key]

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
            with self.lock:
                for instrument in gone:
                    self.subscribed.pop(instrument.key, None)
                    self.stale.pop(instrument.key, None)
                    self.prices.pop(instrument.key, None)  # a price from before a later resubscription means nothing
                    self.pushed.pop(instrument.key, None)
                    self.pushed_at.pop(instrument.key, None)
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
        if publish and self.stale:  # Redis may have been wiped: the banners must still say so
            pipe.hset(keys.FEED_STALE, mapping=dict(self.stale))
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
        """Last prices and chart samples every PRICE_FLUSH_SECONDS, and moved stops every TRAIL_FLUSH_SECONDS,
        in one pipeline. Moved stops are written for a restart and the chart only (the stop in force lives in
        the index): at 10,000 stops moving on every tick, writing each one every 100 ms was most of the
        listener's cost (measured: 2.04x a static stop's tick; at 0.5 s, see make bench)."""
        now = time.monotonic()
        with_stops = now >= self.stops_due
        with self.lock:
            prices, self.pending_prices = self.pending_prices, {}
            ticked, self.ticked = self.ticked, set()
            moved, waiting = {}, []
            if with_stops:
                moved, self.moved = self.moved, {}
                waiting = [(wait.best, list(wait.stops)) for waits in self.pending.values() for wait in waits]
        if with_stops:
            self.stops_due = now + self.app.config["TRAIL_FLUSH_SECONDS"]
        writes = self._moves_to_write(moved, waiting) if moved or waiting else []
        if not prices and not writes:
            return
        pipe = self.conn.pipeline(transaction=False)
        if writes:
            self._write_moves(pipe, writes)
        if not prices:
            pipe.execute()
            return
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
        recovered = sorted(ticked & self.stale.keys())
        if recovered:
            pipe.hdel(keys.FEED_STALE, *recovered)
            with self.lock:
                for key in recovered:
                    self.stale.pop(key, None)
            log.info("feed recovered", extra={"event": "feed_recovered", "instruments": recovered})
        pipe.execute()

    def push_prices(self) -> None:
        """The owners of running strategies get their instruments' prices that changed, each user only theirs,
        over Socket.IO: a page marks P&L live between the engine's state changes. Checked at every flush, so
        a change goes out within ~100 ms; an instrument pushed less than PRICE_PUSH_EARLY_SECONDS ago waits,
        then goes with its next fresh tick, or with the latest price it has once PRICE_PUSH_SECONDS passed."""
        now = time.monotonic()
        by_user: dict[int, dict[str, float]] = defaultdict(dict)
        with self.lock:
            since, self.push_round = self.push_round, now
            never, ticks = float("-inf"), self.last_tick
            changed = {key: price for key, price in self.prices.items() if self.pushed.get(key) != price
                       and key in self.owners and (
                           now - self.pushed_at.get(key, never) >= PRICE_PUSH_SECONDS
                           or (now - self.pushed_at.get(key, never) >= PRICE_PUSH_EARLY_SECONDS
                               and ticks.get(key, never) > since))}
            if not changed:
                return
            for key, price in changed.items():
                self.pushed[key], self.pushed_at[key] = price, now
                for user_id in self.owners[key]:
                    by_user[user_id][key] = price
        if by_user:
            live.push_prices(self.app.config["REDIS_URL"], clock.epoch(), by_user)

    def _write_moves(self, pipe: redis.client.Pipeline, moves: list[tuple[int, int, float, int, int]]) -> None:
        """Each strategy's last move since the previous flush, in one script call: runtime hash trail_stop
        (where a restarted listener and recovery take the stop from) and the run's series for the chart.
        Only into the run it was moved for: a hash gone (the run ended) or started again is left alone."""
        # The moves as one JSON argument, the keys built by the script from their patterns: at 10,000 moves
        # a flush, 60,000 arguments (three keys and three values a move) cost the flush more than everything
        # else in it, and parsing one string a move in Lua a third of the script's time.
        # Redis runs one script at a time and nothing else meanwhile (~4 µs a move): in calls of
        # MOVES_PER_SCRIPT, a STOPLOSS sent meanwhile waits for one call, not for the whole flush.
        script = redis_client.script(pipe, _WRITE_MOVES)
        patterns = [STOP_MOVES_TTL_SECONDS, runtime.TRAIL_STOP, keys.strategy(0), keys.runtime(0), keys.stop_moves(0, 1)]
        for at in range(0, len(moves), MOVES_PER_SCRIPT):
            script(keys=[], args=[*patterns, json.dumps(moves[at:at + MOVES_PER_SCRIPT])], client=pipe)

    def check_health(self) -> None:
        """During market hours, a subscribed instrument with no tick for FEED_STALE_SECONDS (every one, when
        the feed has no session) is marked stale (the UI shows it), logged, and resubscribed; stale ones held
        in position are priced by quotes until ticks return."""
        config = self.app.config
        now_ist = clock.now().astimezone(IST)
        in_session = (is_trading_day(now_ist.date(), config["TRADING_CALENDAR"])
                      and session_for(config["TRADING_CALENDAR"]).contains(now_ist.time()))
        now = time.monotonic()
        idle = self.feed.idle
        stale = [] if not in_session else [
            i for key, i in self.subscribed.items()
            if idle or now - max(self.last_tick.get(key, 0.0), self.subscribed_at.get(key, 0.0))
            > config["FEED_STALE_SECONDS"]]
        for instrument in stale:
            if instrument.key not in self.stale:
                since = clock.now().isoformat()
                with self.lock:
                    self.stale[instrument.key] = since
                self.conn.hset(keys.FEED_STALE, instrument.key, since)
                log.warning("feed stale", extra={"event": "feed_stale", "instrument": instrument.key,
                                                 "seconds": config["FEED_STALE_SECONDS"], "no_feed": idle})
            self.subscribed_at[instrument.key] = now  # resubscribe, then give it the same time again
        if stale and not idle:
            self.feed.unsubscribe(stale)
            self.feed.subscribe(stale)
        self._watch_by_quotes(idle)
        self.conn.set(keys.LISTENER_HEARTBEAT, json.dumps({
            "time": clock.now().isoformat(), "subscribed": len(self.subscribed), "strategies": len(self.members),
            "in_position": len(self.index), "ticks": self.ticks, "stale": sorted(self.stale),
            "quoted": sorted(self.quoted), "feed": getattr(self.feed, "health", {})}),
            ex=HEARTBEAT_TTL_SECONDS)

    def _watch_by_quotes(self, idle: bool) -> None:
        """Which instruments the quote poller prices: the stale ones somebody holds. Saying so is CRITICAL:
        until a quote comes, nothing else watches those stops."""
        if not self.stale and not self.quoted:
            return
        with self.lock:
            held = {m.instrument.key for m in self.members.values() if m.status == Status.IN_POSITION}
            quoted = held & self.stale.keys()
            started, ended, self.quoted = quoted - self.quoted, self.quoted - quoted, quoted
        if started:
            reason = (f"no market feed: {getattr(self.feed, 'health', {}).get('reason')}" if idle else
                      f"no ticks for {self.app.config['FEED_STALE_SECONDS']:g} s")
            log.critical("stop-losses watched by REST quotes", extra={
                "event": "feed_quotes", "instruments": sorted(started), "reason": reason})
        if ended:
            log.info("stop-losses no longer watched by quotes (ticks back, or no position)", extra={
                "event": "feed_quotes_end", "instruments": sorted(ended)})

    def quote_wanted(self) -> list[Wanted]:
        """For the quote poller's thread: each quoted instrument with the accounts holding it."""
        if not self.quoted:
            return []
        with self.lock:
            accounts: dict[str, set[int]] = defaultdict(set)
            instruments: dict[str, Instrument] = {}
            for m in self.members.values():
                if m.status == Status.IN_POSITION and m.instrument.key in self.quoted:
                    instruments[m.instrument.key] = m.instrument
                    if m.account_id is not None:
                        accounts[m.instrument.key].add(m.account_id)
        return [Wanted(instrument, frozenset(accounts[key])) for key, instrument in instruments.items()]

    def check_feed_session(self) -> None:
        """Rereads whose session the Kite feed uses (an admin's new pick, that user's morning login)."""
        try:
            with self.app.app_context():
                session, reason = feed_session.resolve(self.app.config)
        except Exception as exc:  # noqa: BLE001 — the database or a key being down must not stop the listener
            log.error("market-data account not read; feed unchanged", extra={"event": "feed_session_error",
                                                                             "error": repr(exc)})
            return
        self.session = session
        self.feed.use(session, reason)

    def run(self, stop: list[bool]) -> None:
        # The wall-clock start, so a replayed script's ticks can be placed in time afterwards (make soak).
        log.info("feed started", extra={"event": "feed_start", "epoch": time.time()})
        if self.app.config["FEED"] == "kite":
            self.check_feed_session()
        self.feed.start(self.on_ticks)
        self.quotes.start()
        keep_running("listener", lambda: self._serve(stop), stop)
        self.quotes.stop()
        self.feed.stop()
        try:
            self.stops_due = 0.0  # the last moves too: the next listener starts from them
            self.flush_prices()
        except REDIS_DOWN:
            pass  # prices are only for display; the next listener writes fresh ones

    def _serve(self, stop: list[bool]) -> None:
        """Subscribes, rebuilds its view, then keeps it current; run again from the top after an outage."""
        messages = self.conn.pubsub(ignore_subscribe_messages=True)
        messages.subscribe(keys.RUNTIME_CHANNEL)
        self.resync()
        resync_every = self.app.config["LISTENER_RESYNC_SECONDS"]
        session_every = self.app.config["FEED_SESSION_CHECK_SECONDS"]
        next_flush = next_health = time.monotonic()
        next_resync = next_flush + resync_every
        next_sequence_check = next_flush + SEQUENCE_CHECK_SECONDS
        next_session = next_flush + session_every
        while not stop:
            message = messages.get_message(timeout=PRICE_FLUSH_SECONDS)
            if message is not None:
                self.on_message(json.loads(message["data"]))
            self.refire_due()
            now = time.monotonic()
            if now >= next_session and self.app.config["FEED"] == "kite":
                self.check_feed_session()
                next_session = now + session_every
            if now >= next_sequence_check:
                self.check_sequence()
                next_sequence_check = now + SEQUENCE_CHECK_SECONDS
            if now >= next_flush:
                self.flush_prices()
                self.push_prices()
                next_flush = now + PRICE_FLUSH_SECONDS
            if now >= next_health:
                self.check_health()
                next_health = now + 1.0
            if now >= next_resync:
                self.resync()
                next_resync = now + resync_every
        messages.close()


def _beyond(fired: Fired, price: float) -> bool:
    if fired.event.event == STOPLOSS:
        return exits.stop_hit(fired.direction, price, fired.level)
    return exits.target_hit(fired.direction, price, fired.level)


# ARGV: ttl, the field, the strategy, runtime and series keys of strategy 0 (run 1) as patterns, then the moves
# as JSON [[strategy, run, stop, epoch_ms, first], ...] (first: the run's first point: it sets the series' TTL).
_WRITE_MOVES = """
local ttl, field = ARGV[1], ARGV[2]
local static, live, series = ARGV[3]:gsub('0$', ''), ARGV[4]:gsub('0$', ''), ARGV[5]:gsub('0:1$', '')
for _, move in ipairs(cjson.decode(ARGV[6])) do
  local sid, run, stop = string.format('%d', move[1]), string.format('%d', move[2]), tostring(move[3])
  if redis.call('HGET', static .. sid, 'run_id') == run then  -- deleted together with the runtime hash
    redis.call('HSET', live .. sid, field, stop)
    local points = series .. sid .. ':' .. run
    redis.call('RPUSH', points, string.format('%d', move[4]) .. ':' .. stop)
    if move[5] == 1 then redis.call('EXPIRE', points, ttl) end
  end
end
"""


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
