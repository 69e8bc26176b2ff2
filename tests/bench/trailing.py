"""`python -m tests.bench trailing`: the listener with trailing stops that move on every tick.

1. Throughput: 10,000 in-position strategies over 500 symbols (20 a symbol), every tick a new high for its
   symbol, so with trailing stops (every 0.10 in favour the stop moves 0.10) each tick moves the stops of
   the 20 strategies on it; beside it the same run's figure for the same 10,000 as static stops, same
   ticks. The real Listener: a feed thread calls on_ticks as fast as it can while the main thread runs its
   real flush every 100 ms (prices, chart samples and the moved stops, one pipeline), as _serve does.
2. Latency: tick → STOPLOSS on the queue for a trailing stop that has just moved (its own symbol), while a
   feed thread keeps the 10,000 moving at a steady rate and the flush runs; beside it the same run's Redis
   PING round trip, from a process of its own.

A real redis-server on a free port and a SQLite database (tests/bench/harness.py); no worker takes the
STOPLOSS jobs: what is timed is the listener's part.

Designs measured (AMD EPYC, 2 cores shared with other work, Python 3.11.7; trailing / static time a tick):
- every crossed trailing level moves the stop at once (reindex stop and next level, one write a move):
  160x (3,218 vs 515,473 ticks/s over 100,000 ticks; flushes of 10,000 moves up to 8 s);
- stops wait for the price to turn, then all move: 4.5x on a 100,000-tick trend, ~200x on a zigzag;
- stops wait until the price comes back their gap from the best (this one), the flush's moves worked out
  outside the lock and written as JSON in calls of 500: trend 1.7-1.9x, zigzag 2.1-2.5x from run to run,
  the rest being the flush: ~10,000 moves written every ~100 ms, ~100 ms of work that runs back to back;
  on a quiet machine 2.04x (trend) and 2.11x (zigzag);
- the same, moved stops written every TRAIL_FLUSH_SECONDS (0.5 s) instead of with every 100 ms price flush
  (the stop in force is in the index; the written one serves a restart and the chart): 1.78x and 1.75x."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from decimal import Decimal

from tests.bench import harness
from tests.bench.harness import percentile, summary

ENTRY, STOP, STEP = 1000.0, 900.0, 0.10  # trail every STEP in favour, by STEP


def _setup(sysm, strategies: int, symbols: int, probes: int):  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from webapp.extensions import db
    from webapp.models import Strategy

    catalogue = sysm.workdir / "instruments.csv"
    names = harness.synthetic_instruments(catalogue, symbols + probes, ENTRY)
    sysm.env["PAPER_INSTRUMENTS_FILE"] = str(catalogue)
    app = harness.make_app(sysm)
    load, probe_names = names[:symbols], names[symbols:]
    ids = harness.create_strategies(app, strategies // 20, 20, "09:15:00", "15:00:00", symbols=load,
                                    stops=[STOP] * strategies)
    probe_ids = harness.create_strategies(app, probes // 20 or 1, min(20, probes), "09:15:00", "15:00:00",
                                          symbols=probe_names, stops=[ENTRY - 10] * probes)
    with app.app_context():
        db.session.execute(update(Strategy).where(Strategy.id.in_(ids + probe_ids)).values(
            trail_unit="points", trail_every=Decimal(str(STEP)), trail_by=Decimal(str(STEP))))
        db.session.commit()
    harness.put_in_position(app, ids + probe_ids, ENTRY)
    return app, ids, probe_ids, load, probe_names


def _listener(sysm, app):  # type: ignore[no-untyped-def]
    from jobs.listener import Listener
    from webapp import redis_client
    from webapp.feeds.simulated import ScriptedFeed

    class Silent(ScriptedFeed):
        """Plays nothing and knows every symbol: the bench calls on_ticks itself."""

        def subscribe(self, wanted):  # type: ignore[no-untyped-def]
            return []

    empty = sysm.workdir / "empty.csv"
    empty.write_text("offset,symbol,price\n")
    with app.app_context():
        listener = Listener(app, redis_client.current(), Silent(empty))
        listener.resync()
    return listener


def _set_trailing(app, ids: list[int], on: bool) -> None:  # type: ignore[no-untyped-def]
    """The same strategies as static stops (no trail terms in their runtime hashes) or trailing ones."""
    from webapp import keys, redis_client
    from webapp.engine import runtime

    with app.app_context():
        pipe = redis_client.current().pipeline(transaction=False)
        for sid in ids:
            pipe.hset(keys.runtime(sid), mapping={"trail_every": str(STEP) if on else "",
                                                  "trail_by": str(STEP) if on else ""})
            pipe.hdel(keys.runtime(sid), runtime.TRAIL_STOP)
        pipe.execute()


def _pump(listener, frames) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    """Frames through on_ticks on a feed thread, the real flush every 100 ms on this one, as _serve does:
    (seconds for every frame and the last flush, each flush's ms)."""
    from jobs.listener import PRICE_FLUSH_SECONDS

    done = threading.Event()
    flushes: list[float] = []

    def feed() -> None:
        for frame in frames:
            listener.on_ticks(frame)
            # A real feed reads each frame off its socket, which lets the main thread in for the lock; a
            # loop that takes it back at once starved the flush (3 flushes in 1.3 s, moves written late).
            time.sleep(0)
        done.set()

    thread = threading.Thread(target=feed)
    started = time.perf_counter()
    thread.start()
    next_flush = time.perf_counter() + PRICE_FLUSH_SECONDS
    while True:  # as _serve: a flush every PRICE_FLUSH_SECONDS from the start of the last (at once when late)
        finished = done.wait(max(0.0, next_flush - time.perf_counter()))
        t = time.perf_counter()
        next_flush = t + PRICE_FLUSH_SECONDS
        if finished:
            listener.stops_due = 0.0  # the last flush writes the last moves, as the listener's does when it stops
        listener.flush_prices()
        flushes.append((time.perf_counter() - t) * 1000)
        if finished:
            break
    thread.join()
    return time.perf_counter() - started, flushes


def _written(app, ids: list[int], runs: dict[int, int]) -> int:  # type: ignore[no-untyped-def]
    """Points in the runs' stop-moves series: how many moves the flushes wrote."""
    from webapp import keys, redis_client

    with app.app_context():
        pipe = redis_client.current().pipeline(transaction=False)
        for sid in ids:
            pipe.llen(keys.stop_moves(sid, runs[sid]))
            pipe.delete(keys.stop_moves(sid, runs[sid]))
        return sum(pipe.execute()[::2])


def _line(name: str, count: int, seconds: float, flushes: list[float]) -> str:
    return (f"{name}: {count / seconds:,.0f} ticks/s ({seconds * 1e6 / count:.2f} µs a tick), {len(flushes)} flushes "
            f"p50 {statistics.median(flushes):.1f} ms p99 {percentile(flushes, 99):.1f} ms")


def trailing(strategies: int = 10_000, symbols: int = 500, frames: int = 3000, probes: int = 200,
             background_tps: int = 2_000) -> None:
    from rq import Queue

    from webapp import keys, redis_client
    from webapp.feeds import Instrument, Tick

    sys.setswitchinterval(0.0005)  # as jobs/listener.py main() does
    with harness.system() as sysm:
        t0 = time.monotonic()
        app, ids, probe_ids, load, probe_names = _setup(sysm, strategies, symbols, probes)
        setup_s = time.monotonic() - t0
        instruments = [Instrument("NSE", name, 200000 + n) for n, name in enumerate(load)]
        count = frames * symbols
        # Trend: every frame a new high on every symbol, one STEP above the last, so every tick moves the
        # stops of the 20 strategies on it. Zigzag: a new high two STEPs up, then a dip of 1.5 STEPs, so
        # every other tick moves them and every other one turns back (the worst case for waiting stops).
        trend = [[Tick(i, round(ENTRY + STEP * (k + 1), 2)) for i in instruments] for k in range(frames)]
        zigzag = [[Tick(i, round(ENTRY + STEP * (k + 2 if k % 2 == 0 else k + 0.5), 2)) for i in instruments]
                  for k in range(frames)]
        top = round(STOP + STEP * frames, 2)  # every stop, once the trend has been played

        _set_trailing(app, ids, on=False)
        static = _listener(sysm, app)
        runs = {sid: static.members[sid].run_id for sid in ids}
        static_s, static_flush = _pump(static, trend)
        assert not static.moved and len(static.index) == strategies + probes
        static_zz_s, static_zz_flush = _pump(static, zigzag)

        _set_trailing(app, ids, on=True)
        moving_zz = _listener(sysm, app)
        zz_s, zz_flush = _pump(moving_zz, zigzag)
        zz_written = _written(app, ids, runs)
        assert {moving_zz.stop_of(sid) for sid in ids} == {round(STOP + STEP * frames, 2)}

        _set_trailing(app, ids, on=True)
        moving = _listener(sysm, app)
        moving_s, moving_flush = _pump(moving, trend)
        written = _written(app, ids, runs)
        assert {moving.stop_of(sid) for sid in ids} == {top}  # every stop moved on every tick
        with app.app_context():
            assert float(redis_client.current().hget(keys.runtime(ids[0]), "trail_stop")) == top

        print(f"trailing: {strategies} strategies in position over {symbols} symbols (20 a symbol), {count:,} "
              f"ticks in frames of {symbols}, a feed thread on on_ticks and the real 100 ms flush beside it "
              f"(set-up {setup_s:.0f} s)")
        print("  trend, every tick a new high:")
        print("    " + _line("static stops  ", count, static_s, static_flush))
        print("    " + _line("trailing stops", count, moving_s, moving_flush)
              + f"; {count * 20:,} stop moves, {written:,} written")
        print(f"    trailing / static time a tick: {moving_s / static_s:.2f}x (target ≤ 2x)")
        print("  zigzag, a new high then a dip, every tick:")
        print("    " + _line("static stops  ", count, static_zz_s, static_zz_flush))
        print("    " + _line("trailing stops", count, zz_s, zz_flush)
              + f"; {count // 2 * 20:,} stop moves, {zz_written:,} written")
        print(f"    trailing / static time a tick: {zz_s / static_zz_s:.2f}x")

        # --- latency: a probe symbol moves twice, then one tick falls through the moved stop
        stop_event = threading.Event()
        background: list[int] = [0]
        level = [ENTRY + STEP * frames]  # past the trend's last high: every tick moves again

        def keep_moving() -> None:
            per_step = max(1, background_tps // 100)
            n = 0
            while not stop_event.is_set():
                started = time.perf_counter()
                level[0] = round(level[0] + STEP, 2)
                batch = [Tick(instruments[(n + j) % symbols], level[0]) for j in range(per_step)]
                n += per_step
                moving.on_ticks(batch)
                background[0] += per_step
                time.sleep(max(0.0, 0.01 - (time.perf_counter() - started)))

        def keep_flushing() -> None:
            while not stop_event.wait(0.1):
                moving.flush_prices()

        rtt: list[float] = []

        def ping() -> None:  # from a process of its own: in this one it would wait on the listener's GIL
            out = subprocess.run([sys.executable, "-c", "import json; from tests.bench.harness import redis_rtt_ms; "
                                  f"print(json.dumps(redis_rtt_ms({sysm.redis_url!r}, 600)))"],
                                 cwd=harness.ROOT, capture_output=True, text=True, check=True).stdout
            rtt.extend(json.loads(out.strip().splitlines()[-1]))

        threads = [threading.Thread(target=keep_moving), threading.Thread(target=keep_flushing),
                   threading.Thread(target=ping)]
        for thread in threads:
            thread.start()
        queue = Queue("stoploss", connection=moving.conn)
        latencies: list[float] = []
        fired_ok = 0
        began = time.perf_counter()
        for n, name in enumerate(probe_names):
            probe = Instrument("NSE", name, 200000 + symbols + n)
            moving.on_ticks([Tick(probe, ENTRY + 0.5)])  # stop 990 → 990.5
            moving.on_ticks([Tick(probe, ENTRY + 1.0)])  # → 991.0
            before = queue.count
            started = time.perf_counter()
            moving.on_ticks([Tick(probe, 990.95)])  # through the moved stop: STOPLOSS enqueued before return
            latencies.append((time.perf_counter() - started) * 1000)
            fired_ok += queue.count == before + 1
            time.sleep(0.02)
        elapsed = time.perf_counter() - began
        stop_event.set()
        for thread in threads:
            thread.join()
        fired = [f for f in moving.fired.values() if f.event.strategy_id in set(probe_ids)]
        assert all(abs(f.level - 991.0) < 1e-9 for f in fired), {f.level for f in fired}
        print(f"  tick → STOPLOSS on the queue, trailing stop just moved, {len(probe_names)} probes, background "
              f"{background[0] / elapsed:,.0f} moving ticks/s ({background[0] * 20 / elapsed:,.0f} stop moves/s) "
              f"and the 100 ms flush: {fired_ok}/{len(probe_names)} on the queue at return, all at the moved stop")
        print("  " + summary("tick → STOPLOSS on the queue", latencies))
        print("  " + summary("Redis PING round trip (same run)", rtt))
