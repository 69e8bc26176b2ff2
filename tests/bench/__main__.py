"""`make bench` / `python -m tests.bench [herd|lateness|latency ...]`: prints each figure and the machine."""
from __future__ import annotations

import sys
import time

from tests.bench import harness
from tests.bench.harness import summary


def herd(strategies: int = 1000, workers: int = 2) -> None:
    """The 09:15:00 herd: every strategy has the same buy_time."""
    with harness.system() as sysm:
        app = harness.make_app(sysm)
        lead = 4 + strategies / 50  # time to START them all before the instant (~60-130 a second here)
        buy, instant = harness.ist_after(lead)
        ids = harness.create_strategies(app, strategies // 10, 10, buy, "23:59:59")
        for _ in range(workers):
            sysm.spawn("jobs.worker")
        sysm.spawn("jobs.scheduler")
        harness.start_all(app, ids)
        assert time.time() < instant, "set-up overran the instant; raise the lead"
        harness.wait_until(lambda: harness.orders_placed(app) >= strategies, lead + 60)
        placed = harness.placed_times(app, ids)
        lateness = [(t - instant) * 1000 for t in placed.values()]
        print(f"herd: {strategies} strategies, same buy_time, {workers} SimpleWorkers, paper broker, "
              f"{sysm.database_url.split(':')[0]}")
        print(f"  placed {len(placed)}/{strategies}; early: {sum(1 for x in lateness if x < 0)}")
        print(f"  last BUY placed {max(lateness):.1f} ms after the instant "
              f"(throughput {len(placed) / (max(lateness) / 1000):.0f} orders/s)")
        print("  " + summary("lateness", lateness))


def lateness(instants: int = 25, per_instant: int = 4, workers: int = 2) -> None:
    """Scheduled instant → order at the broker, for strategies spread over consecutive seconds."""
    with harness.system() as sysm:
        app = harness.make_app(sysm)
        for _ in range(workers):
            sysm.spawn("jobs.worker")
        sysm.spawn("jobs.scheduler")
        groups = []
        first_lead = 4
        for k in range(instants):
            buy, instant = harness.ist_after(first_lead + k)
            ids = harness.create_strategies(app, 1, per_instant, buy, "23:59:59", symbol="TCS")
            groups.append((instant, ids))
        for _, ids in groups:
            harness.start_all(app, ids)
        every = [sid for _, ids in groups for sid in ids]
        harness.wait_until(lambda: harness.orders_placed(app) >= len(every), first_lead + instants + 30)
        placed = harness.placed_times(app, every)
        values = [(placed[sid] - instant) * 1000 for instant, ids in groups for sid in ids if sid in placed]
        print(f"lateness: {len(every)} strategies, {per_instant} per second over {instants} s, {workers} SimpleWorkers")
        print(f"  placed {len(placed)}/{len(every)}; early: {sum(1 for x in values if x < 0)}")
        print("  " + summary("instant → order at broker", values))


def latency(events: int = 200, kinds: tuple[str, ...] = ("simple", "fork")) -> None:
    """Event enqueued → order at the broker, one at a time, non-forking vs forking worker."""
    from webapp import clock
    from webapp.engine.events import BUY, Event
    from webapp import redis_client
    from sqlalchemy import select

    from webapp.engine import dispatch
    from webapp.extensions import db
    from webapp.models import Strategy

    for kind in kinds:
        with harness.system() as sysm:
            app = harness.make_app(sysm)
            buy, _ = harness.ist_after(3600)
            ids = harness.create_strategies(app, 1, events, buy, "23:59:59")
            harness.start_all(app, ids)
            sysm.spawn("jobs.worker", RQ_WORKER_CLASS=kind)
            time.sleep(1.5)  # let the worker come up before the first sample
            samples = []
            with app.app_context():
                runs = dict(db.session.execute(select(Strategy.id, Strategy.run_id).where(Strategy.id.in_(ids))).all())
                for k, sid in enumerate(ids):
                    sent = clock.epoch()
                    dispatch.enqueue(redis_client.current(), [Event.for_run(BUY, sid, runs[sid], clock.now())])
                    # Wait for this order (the k+1th), then for its record (numbered just before it is written).
                    harness.wait_until(lambda k=k: harness.orders_placed(app) > k, 10, interval=0.005)
                    harness.wait_until(lambda s=sid: s in harness.placed_times(app, [s]), 2, interval=0.005)
                    placed = harness.placed_times(app, [sid])
                    if sid in placed:
                        samples.append((placed[sid] - sent) * 1000)
            print(f"latency ({'SimpleWorker' if kind == 'simple' else 'forking Worker'}): "
                  + summary("enqueue → order at broker", samples))


def tick_to_order(strategies: int = 10_000, symbols: int = 500, background_tps: int = 20_000,
                  breaches: int = 100, workers: int = 2) -> None:
    """A breaching tick → the STOPLOSS exit at the paper exchange, with every strategy in position and a
    background of non-breaching ticks on all symbols."""
    import json
    import random
    import threading

    with harness.system() as sysm:
        catalogue = sysm.workdir / "instruments.csv"
        names = harness.synthetic_instruments(catalogue, symbols)
        sysm.env["PAPER_INSTRUMENTS_FILE"] = str(catalogue)
        stops = [990.0 if n < breaches else 900.0 for n in range(strategies)]  # one high stop on each of the first symbols
        app = harness.make_app(sysm)
        ids = harness.create_strategies(app, strategies // 20, 20, "09:15:00", "15:00:00", symbols=names, stops=stops)
        harness.put_in_position(app, ids, 1000.0)
        # 12 s of background (prices 950–1050, never ≤ 900) in 10 ms steps, plus one breach tick per target.
        rng = random.Random(7)
        step, duration, start_breaches = 0.01, 12.0, 3.0
        per_step = int(background_tps * step)
        rows = []
        for k in range(int(duration / step)):
            rows += [f"{k * step:.2f},{names[(k * per_step + j) % symbols]},{rng.uniform(995, 1050):.2f}"
                     for j in range(per_step)]
        rows += [f"{start_breaches + n * 0.07:.2f},{names[n]},985.00" for n in range(breaches)]
        script = sysm.workdir / "ticks.csv"
        script.write_text("offset,symbol,price\n" + "\n".join(rows) + "\n")
        for _ in range(workers):
            sysm.spawn("jobs.worker")
        sysm.spawn("jobs.listener", FEED=f"csv:{script}", LOG_LEVEL="INFO")
        rtt: list[float] = []
        sampler = threading.Thread(target=lambda: rtt.extend(harness.redis_rtt_ms(sysm.redis_url, 1500)))
        sampler.start()
        harness.wait_until(lambda: harness.orders_placed(app) >= breaches, 60)
        sampler.join()
        time.sleep(0.5)
        fired = {}
        for line in (sysm.workdir / next(p.name for p in sysm.workdir.glob("jobs.listener-*.log"))).read_text().splitlines():
            if line.startswith("{") and '"stop-loss breached"' in line:
                entry = json.loads(line)
                fired[entry["strategy_id"]] = entry["time"]
        from datetime import datetime

        from webapp import keys, redis_client

        latencies = []
        with app.app_context():
            conn = redis_client.current()
            for key in conn.scan_iter(keys.paper_order("*"), count=1000):
                order = {k.decode(): v.decode() for k, v in conn.hgetall(key).items()}
                sid = int(order["tag"].split("L")[0]) if "L" in order["tag"] else None
                if sid in fired:
                    latencies.append((datetime.fromisoformat(order["placed_at"]).timestamp()
                                      - datetime.fromisoformat(fired[sid]).timestamp()) * 1000)
        print(f"tick → order: {strategies} strategies in position over {symbols} symbols, background "
              f"{background_tps} ticks/s, {workers} SimpleWorkers, paper broker")
        print(f"  breaches fired {len(fired)}/{breaches}, exits placed {len(latencies)}")
        print("  " + summary("breach detected → order at broker", latencies))
        print("  " + summary("Redis PING round trip (same run)", rtt))


def listener_throughput(strategies: int = 10_000, symbols: int = 500, batches: int = 400) -> None:
    """Ticks a listener checks per second on one core (in-process, no breaches), 10,000 strategies indexed."""
    import random

    with harness.system() as sysm:
        catalogue = sysm.workdir / "instruments.csv"
        names = harness.synthetic_instruments(catalogue, symbols)
        app = harness.make_app(sysm)
        ids = harness.create_strategies(app, strategies // 20, 20, "09:15:00", "15:00:00", symbols=names,
                                        stops=[900.0] * strategies)
        harness.put_in_position(app, ids, 1000.0)
        from jobs.listener import Listener
        from webapp import redis_client
        from webapp.feeds import Instrument, Tick
        from webapp.feeds.simulated import ScriptedFeed

        empty = sysm.workdir / "empty.csv"
        empty.write_text("offset,symbol,price\n")
        with app.app_context():
            listener = Listener(app, redis_client.current(), ScriptedFeed(empty))
            listener.resync()
        rng = random.Random(3)
        instruments = [Instrument("NSE", name, 200000 + n) for n, name in enumerate(names)]
        frames = [[Tick(i, round(rng.uniform(950, 1050), 2)) for i in instruments] for _ in range(50)]
        started = time.perf_counter()
        for n in range(batches):
            listener.on_ticks(frames[n % len(frames)])
        elapsed = time.perf_counter() - started
        ticks = batches * symbols
        print(f"listener throughput: {ticks} ticks in frames of {symbols}, {len(listener.index)} strategies indexed: "
              f"{ticks / elapsed:,.0f} ticks/s on one core ({elapsed * 1e6 / ticks:.2f} µs a tick)")


from tests.bench import broker  # noqa: E402
from tests.bench.live import dom_latency, status_throughput, tick_to_dom  # noqa: E402
from tests.bench.trailing import trailing  # noqa: E402

SCENARIOS = {"broker": broker.herd, "dom": dom_latency, "status": status_throughput, "ticks": tick_to_dom, "latency": latency, "lateness": lateness, "herd": herd, "listener": listener_throughput,
             "tick": tick_to_order, "trailing": trailing}

if __name__ == "__main__":
    print(f"machine: {harness.machine()}")
    for name in sys.argv[1:] or list(SCENARIOS):
        started = time.monotonic()
        SCENARIOS[name]()
        print(f"  ({name} took {time.monotonic() - started:.0f} s)\n", flush=True)
