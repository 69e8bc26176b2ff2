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
        lead = 4 + strategies / 150  # time to START them all before the instant
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


def latency(events: int = 200) -> None:
    """Event enqueued → order at the broker, one at a time, non-forking vs forking worker."""
    from webapp import clock
    from webapp.engine.events import BUY, Event
    from webapp import redis_client
    from webapp.engine import dispatch
    from webapp.market_calendar import exchange_date

    for kind in ("simple", "fork"):
        with harness.system() as sysm:
            app = harness.make_app(sysm)
            buy, _ = harness.ist_after(3600)
            ids = harness.create_strategies(app, 1, events, buy, "23:59:59")
            harness.start_all(app, ids)
            sysm.spawn("jobs.worker", RQ_WORKER_CLASS=kind)
            time.sleep(1.5)  # let the worker come up before the first sample
            samples = []
            with app.app_context():
                for sid in ids:
                    sent = clock.epoch()
                    dispatch.enqueue(redis_client.current(), [Event.for_run(BUY, sid, exchange_date(clock.now()), clock.now())])
                    harness.wait_until(lambda n=len(samples): harness.orders_placed(app) > n, 10, interval=0.005)
                    placed = harness.placed_times(app, [sid])
                    if sid in placed:
                        samples.append((placed[sid] - sent) * 1000)
            print(f"latency ({'SimpleWorker' if kind == 'simple' else 'forking Worker'}): "
                  + summary("enqueue → order at broker", samples))


SCENARIOS = {"latency": latency, "lateness": lateness, "herd": herd}

if __name__ == "__main__":
    print(f"machine: {harness.machine()}")
    for name in sys.argv[1:] or list(SCENARIOS):
        started = time.monotonic()
        SCENARIOS[name]()
        print(f"  ({name} took {time.monotonic() - started:.0f} s)\n", flush=True)
