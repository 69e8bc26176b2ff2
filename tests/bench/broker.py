"""Issue 11's benchmark: the 09:15 herd, a stop-loss breach in the middle of it, and STOP of everything,
against a broker that behaves like Kite: 50 ms a call, 200 ms from OPEN to COMPLETE, 10 orders/s per
account. Every process is real (2 workers, 1 exits worker, scheduler, listener); the floor of each figure
is printed beside it from the same run."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import psutil

from tests.bench import harness
from tests.bench.harness import summary

LATENCY_MS, FILL_MS = 50, 200
FLOOR_ACCOUNTS = 900_000  # the floor's accounts: rate-limit buckets of their own


def _paper_orders(app) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    from webapp import keys, redis_client

    with app.app_context():
        conn = redis_client.current()
        pipe = conn.pipeline(transaction=False)
        names = list(conn.scan_iter(keys.paper_order("*"), count=2000))
        for name in names:
            pipe.hgetall(name)
        return [{k.decode(): v.decode() for k, v in raw.items()} for raw in pipe.execute()]


def _max_per_account_per_second(orders: list[dict[str, str]]) -> int:
    by_account: dict[str, list[float]] = defaultdict(list)
    for order in orders:
        by_account[order["account_id"]].append(float(order["placed_epoch"]))
    worst = 0
    for stamps in by_account.values():
        stamps.sort()
        start = 0
        for end, stamp in enumerate(stamps):
            while stamp - stamps[start] >= 1.0:
                start += 1
            worst = max(worst, end - start + 1)
    return worst


class Memory:
    """RSS of the worker processes, sampled every 50 ms."""

    def __init__(self, procs: list) -> None:  # type: ignore[type-arg]
        self.procs = [psutil.Process(p.pid) for p in procs]
        self.peak = 0.0
        self.running = True
        threading.Thread(target=self._sample, daemon=True).start()

    def now(self) -> float:
        return sum(p.memory_info().rss for p in self.procs) / len(self.procs) / 2**20

    def cpu(self) -> float:
        """CPU seconds the worker processes have used so far."""
        return sum(sum(p.cpu_times()[:2]) for p in self.procs)

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, max(p.memory_info().rss for p in self.procs) / 2**20)
            time.sleep(0.05)


def _floor(sysm, strategies: int, accounts: int, processes: int = 2) -> dict:  # type: ignore[no-untyped-def]
    """The paper exchange alone, driven as the workers drive it, with no engine (tests/bench/floor.py)."""
    start = time.time() + 8  # each process's threads are up by then
    share = accounts // processes
    procs = [subprocess.Popen([sys.executable, "-m", "tests.bench.floor", str(FLOOR_ACCOUNTS + n * share), str(share),
                               str(strategies // accounts), f"{start:.3f}"], cwd=harness.ROOT, env=sysm.env,
                              stdout=subprocess.PIPE, text=True) for n in range(processes)]
    results = [json.loads(proc.communicate(timeout=120)[0].strip().splitlines()[-1]) for proc in procs]
    return {"placed": [x for r in results for x in r["placed"]], "filled": [x for r in results for x in r["filled"]],
            "cpu": sum(r["cpu"] for r in results)}


def herd(strategies: int = 1000, accounts: int = 100, breaches: int = 40) -> None:
    import os

    from sqlalchemy import select

    with harness.system() as sysm:
        sysm.env.update(PAPER_LATENCY_MS=str(LATENCY_MS), PAPER_FILL_MS=str(FILL_MS))
        floor = _floor(sysm, strategies, accounts)
        catalogue = sysm.workdir / "instruments.csv"
        names = harness.synthetic_instruments(catalogue, breaches + 1)
        os.environ["PAPER_INSTRUMENTS_FILE"] = sysm.env["PAPER_INSTRUMENTS_FILE"] = str(catalogue)
        app = harness.make_app(sysm)
        lead = 8 + strategies / 50
        buy, instant = harness.ist_after(lead)
        ids = harness.create_strategies(app, accounts, strategies // accounts, buy, "23:59:59", symbol=names[0])
        held = harness.create_strategies(app, breaches, 1, "09:15:00", "23:59:59", symbols=names[1:],
                                         stops=[990.0] * breaches)
        harness.put_in_position(app, held, 1000.0)
        # Breaching ticks every 0.25 s over 10 s around the instant (offsets from the listener's start): some
        # land in the middle of the herd, the rest are the same measurement on a quiet system.
        spawned = time.time()
        offsets = [instant - spawned - 4 + 0.25 * n for n in range(breaches)]
        script = sysm.workdir / "ticks.csv"
        script.write_text("offset,symbol,price\n" + "\n".join(
            f"{offset:.3f},{names[1 + n]},985.00" for n, offset in enumerate(offsets)) + "\n")
        workers = [sysm.spawn("jobs.worker"), sysm.spawn("jobs.worker"), sysm.spawn("jobs.worker", "stoploss")]
        sysm.spawn("jobs.scheduler")
        sysm.spawn("jobs.listener", FEED=f"csv:{script}", LOG_LEVEL="INFO")
        harness.start_all(app, ids)
        assert time.time() < instant - 1, "set-up overran the instant; raise the lead"
        time.sleep(max(0.0, instant - 1 - time.time()))
        memory = Memory(workers)
        at_rest, cpu_before, herd_started = memory.now(), memory.cpu(), time.monotonic()
        harness.wait_until(lambda: _positions(app, ids) >= strategies, 60, interval=0.5)
        cpu_used, herd_wall = memory.cpu() - cpu_before, time.monotonic() - herd_started
        from webapp.extensions import db
        from webapp.models import Strategy

        with app.app_context():
            confirmed = db.session.scalars(select(Strategy.updated_at).where(Strategy.id.in_(ids))).all()
        orders = _paper_orders(app)
        buys = [o for o in orders if o["side"] == "BUY" and not o["tag"].startswith("F")]
        placed = sorted(float(o["placed_epoch"]) - instant for o in buys)
        duplicates = sum(n - 1 for n in Counter(o["tag"] for o in buys).values() if n > 1)
        print(f"herd: {strategies} strategies over {accounts} accounts, one buy time; paper broker at "
              f"{LATENCY_MS} ms a call (±40%), {FILL_MS} ms to fill, 10 orders/s an account; "
              f"2 workers + 1 exits worker, {sysm.database_url.split(':')[0]}")
        print(f"  BUYs at the broker {len(buys)}/{strategies}, duplicates {duplicates}, early "
              f"{sum(1 for x in placed if x < 0)}, most orders one account sent in any 1 s: "
              f"{_max_per_account_per_second(buys)} (Kite answers 429 past 10)")
        print(f"  last BUY at the broker {placed[-1] * 1000:.0f} ms after the instant (floor: half a round trip, "
              f"~{LATENCY_MS / 2:.0f} ms); " + summary("BUY at broker after the instant", [x * 1000 for x in placed]))
        late = [(c.timestamp() - instant) * 1000 for c in confirmed]
        print(f"  every position confirmed {max(late):.0f} ms after the instant (floor: a round trip and the "
              f"fill, ~{LATENCY_MS + FILL_MS} ms)")
        print(f"  floor, same machine and run: the paper exchange alone, {strategies} orders over {accounts} other "
              f"accounts from 2 processes x ORDER_THREADS threads, no engine: last order at the exchange "
              f"{max(floor['placed']) * 1000:.0f} ms, last fill seen {max(floor['filled']) * 1000:.0f} ms, "
              f"CPU {floor['cpu'] / strategies * 1000:.1f} ms an order; "
              + summary("at the exchange", [x * 1000 for x in floor["placed"]]))
        print(f"  worker RSS: at rest {at_rest:.0f} MB each, peak {memory.peak:.0f} MB; worker CPU {cpu_used:.1f} s "
              f"over {herd_wall:.1f} s ({cpu_used / strategies * 1000:.1f} ms an order, 2 cores shared with "
              f"scheduler, listener, Redis and this client)")
        _breaches(sysm, orders, instant, max(placed))

        # STOP of every position, as users pressing STOP (8 at a time), through the service the API uses.
        from webapp.services import lifecycle

        def stop(sid: int) -> float:
            with app.app_context():
                lifecycle.request_stop(db.session.get(Strategy, sid))
                db.session.remove()
                return time.time()

        first_stop = time.time()
        with ThreadPoolExecutor(8) as pool:
            last_stop = max(pool.map(stop, ids))
        harness.wait_until(lambda: _sells(app) >= strategies, 60, interval=0.5)
        sells = [float(o["placed_epoch"]) for o in _paper_orders(app) if o["side"] == "SELL" and "X" in o["tag"]]
        print(f"  STOP of all {strategies}: STOPs issued over {(last_stop - first_stop) * 1000:.0f} ms; "
              f"SELLs at the broker {len(sells)}/{strategies}; last SELL {(max(sells) - last_stop) * 1000:.0f} ms "
              f"after the last STOP")
        memory.running = False
        print(f"  worker RSS peak over the run {memory.peak:.0f} MB")
        print("  " + summary("Redis PING round trip (same run, after)", harness.redis_rtt_ms(sysm.redis_url, 300)))


def _positions(app, ids: list[int]) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.models import Strategy

    with app.app_context():
        count = db.session.scalar(select(func.count()).where(Strategy.id.in_(ids), Strategy.status == "in_position"))
        db.session.remove()
        return count


def _sells(app) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for o in _paper_orders(app) if o["side"] == "SELL" and "X" in o["tag"])


def _breaches(sysm, orders: list[dict[str, str]], instant: float, herd_end: float) -> None:  # type: ignore[no-untyped-def]
    fired = {}
    log = next(sysm.workdir.glob("jobs.listener-*.log")).read_text()
    for line in log.splitlines():
        if line.startswith("{") and '"stop-loss breached"' in line:
            entry = json.loads(line)
            fired[entry["strategy_id"]] = datetime.fromisoformat(entry["time"]).timestamp()
    during, quiet = [], []
    for order in orders:
        if "L" not in order["tag"]:
            continue
        sid = int(order["tag"].split("L")[0])
        if sid in fired:
            value = (float(order["placed_epoch"]) - fired[sid]) * 1000
            (during if 0 <= fired[sid] - instant <= herd_end else quiet).append(value)
    print(f"  stop-loss breaches fired {len(fired)}, exits at the broker {len(during) + len(quiet)}")
    if during:
        print("  " + summary("tick → exit at the broker, breach during the herd", during))
    if quiet:
        print("  " + summary("tick → exit at the broker, quiet system (floor of the same path)", quiet))
