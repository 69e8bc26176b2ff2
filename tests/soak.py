"""`make soak`: 1,000 users × 5 strategies through a trading day compressed into a few minutes, with the
real worker (2), scheduler and listener processes on a private Redis and a SQLite file, loopback only; it
stops by itself. The market is a replayed random walk, so which stop-losses had to fire can be worked out
independently from the script and compared with what the system did.

Prints: orders expected vs placed, duplicates, stop-losses fired vs breaches, each process's memory at
the start and the end of the day. SOAK_USERS / SOAK_PER_USER scale it down for a quick run."""
from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from tests.bench import harness

USERS = int(os.environ.get("SOAK_USERS", "1000"))
PER_USER = int(os.environ.get("SOAK_PER_USER", "5"))
SYMBOLS = 200
TICKS_PER_SECOND = 4  # per symbol: 800 ticks/s in all
STEP = 0.0015  # a tick's move, as a fraction of the price (σ)
DAY_SECONDS = 180  # the replayed market: buys over its first minute, sells over its last
BUY_FROM, SELL_FROM, SPREAD = 15, 100, 60
BORDER_SECONDS = 0.5  # a breaching tick this close to the entry or the sell time may go either way


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def market(path: Path, names: list[str], seed: int = 11) -> dict[str, list[tuple[float, float]]]:
    rng = random.Random(seed)
    prices = {name: 1000.0 for name in names}
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    rows = []
    for step in range(DAY_SECONDS * TICKS_PER_SECOND):
        at = step / TICKS_PER_SECOND
        for name in names:
            prices[name] = round(round(prices[name] * (1 + rng.gauss(0, STEP)) / 0.05) * 0.05, 2)
            series[name].append((at, prices[name]))
            rows.append(f"{at:.2f},{name},{prices[name]:.2f}")
    path.write_text("offset_seconds,symbol,price\n" + "\n".join(rows) + "\n")
    return series


def main() -> None:
    print(f"machine: {harness.machine()}")
    total = USERS * PER_USER
    started_at = time.monotonic()
    with harness.system() as sysm:
        catalogue = sysm.workdir / "instruments.csv"
        names = harness.synthetic_instruments(catalogue, SYMBOLS)
        sysm.env["PAPER_INSTRUMENTS_FILE"] = str(catalogue)
        os.environ["PAPER_INSTRUMENTS_FILE"] = str(catalogue)
        app = harness.make_app(sysm)
        rng = random.Random(5)
        lead = 30 + total / 40  # time to START them all (~60 a second here), before the day begins
        day_start = time.time() + lead
        from webapp.market_calendar import IST

        def ist(epoch: float) -> str:
            return datetime.fromtimestamp(epoch, IST).strftime("%H:%M:%S")

        day_start = float(int(day_start))
        plan = [(day_start + BUY_FROM + n % SPREAD, day_start + SELL_FROM + n % SPREAD) for n in range(total)]
        stops = [round(1000 * (1 - rng.uniform(0.005, 0.04)), 2) for _ in range(total)]
        ids = harness.create_strategies(app, USERS, PER_USER, "", "", symbols=names, stops=stops,
                                        times=[(ist(buy), ist(sell)) for buy, sell in plan])
        by_id = {sid: n for n, sid in enumerate(ids)}
        script = sysm.workdir / "market.csv"
        series = market(script, names)
        for _ in range(2):
            sysm.spawn("jobs.worker")
        sysm.spawn("jobs.scheduler")
        t = time.monotonic()
        harness.start_all(app, ids)
        print(f"soak: {USERS} users × {PER_USER} strategies = {total}; started in {time.monotonic() - t:.0f} s; "
              f"{SYMBOLS} symbols × {TICKS_PER_SECOND} ticks/s; day of {DAY_SECONDS} s; 2 SimpleWorkers")
        assert time.time() < day_start - 3, "set-up overran the day's start; raise the lead"
        time.sleep(max(0.0, day_start - 3 - time.time()))
        sysm.spawn("jobs.listener", FEED=f"csv:{script}", LOG_LEVEL="INFO")
        time.sleep(2)
        pids = {f"{p.args[-1]}-{n}": p.pid for n, p in enumerate(sysm.procs)}
        pids["redis-server"] = sysm.redis_pid
        memory_start = {name: rss_mb(pid) for name, pid in pids.items()}
        harness.wait_until(lambda: _all_ended(app, ids), DAY_SECONDS + 60, interval=2)
        time.sleep(2)
        memory_end = {name: rss_mb(pid) for name, pid in pids.items()}
        _report(app, sysm, ids, by_id, plan, stops, series, names, memory_start, memory_end)
    print(f"  (soak took {time.monotonic() - started_at:.0f} s)")


def _all_ended(app, ids: list[int]) -> bool:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.models import Strategy
    from webapp.state_machine import RUNNING

    with app.app_context():
        return not db.session.scalar(select(func.count(Strategy.id)).where(
            Strategy.id.in_(ids), Strategy.status.in_([s.value for s in RUNNING])))


def _report(app, sysm, ids, by_id, plan, stops, series, names, memory_start, memory_end) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from webapp import keys, redis_client
    from webapp.extensions import db
    from webapp.models import OrderLog, Strategy

    listener_log = next(sysm.workdir.glob("jobs.listener-*.log")).read_text().splitlines()
    feed_epoch = next(json.loads(line)["epoch"] for line in listener_log if '"event": "feed_start"' in line)
    fired = {json.loads(line)["strategy_id"] for line in listener_log if '"stop-loss breached"' in line}
    with app.app_context():
        conn = redis_client.current()
        broker: Counter[str] = Counter()
        for key in conn.scan_iter(keys.paper_order("*"), count=2000):
            broker[conn.hget(key, "tag").decode()] += 1
        strategies = {s.id: s for s in db.session.scalars(select(Strategy).where(Strategy.id.in_(ids)))}
        rows = list(db.session.scalars(select(OrderLog).where(OrderLog.strategy_id.in_(ids))))
    entries = {r.strategy_id: r.updated_at.timestamp() for r in rows if r.event == "BUY" and r.status == "COMPLETE"}
    statuses = Counter(s.status for s in strategies.values())
    expected_orders = len(entries) * 2  # every strategy that bought must also exit, once
    placed = sum(broker.values())
    duplicates = sum(1 for count in broker.values() if count > 1)
    symbol_of = {sid: names[by_id[sid] % len(names)] for sid in ids}
    definite, borderline, missed, false_fires = set(), set(), [], []
    for sid, entered in entries.items():
        n = by_id[sid]
        sell_at = plan[n][1]
        hits = [feed_epoch + at for at, price in series[symbol_of[sid]] if price <= stops[n] and entered < feed_epoch + at < sell_at]
        if any(entered + BORDER_SECONDS < t < sell_at - BORDER_SECONDS for t in hits):
            definite.add(sid)
        elif hits:
            borderline.add(sid)
    stopped = {sid for sid, s in strategies.items() if s.status == "stopped_loss"}
    missed = sorted(definite - stopped)
    false_fires = sorted(stopped - definite - borderline)
    print("  | measure | value |")
    print("  |---|---|")
    for name, value in [
        ("strategies", len(ids)),
        ("final statuses", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))),
        ("orders expected (a BUY and one exit per strategy that bought)", expected_orders),
        ("orders placed at the (paper) broker", placed),
        ("order-log rows COMPLETE", sum(1 for r in rows if r.status == "COMPLETE")),
        ("duplicate orders (a tag placed twice)", duplicates),
        ("stop-loss breaches in the replayed market (clear of entry/sell by 0.5 s)", len(definite)),
        ("  of which stopped out", len(definite & stopped)),
        ("breaches within 0.5 s of entry or sell time (either outcome right)", len(borderline)),
        ("stop-losses fired by the listener / exits by STOPLOSS", f"{len(fired)} / {len(stopped)}"),
        ("missed stop-losses", len(missed)),
        ("stop-outs without a breach", len(false_fires)),
    ]:
        print(f"  | {name} | {value} |")
    print("  | process | RSS at start (MB) | RSS at end (MB) |")
    print("  |---|---|---|")
    for name in memory_start:
        print(f"  | {name} | {memory_start[name]:.0f} | {memory_end.get(name, 0):.0f} |")
    ok = placed == expected_orders and duplicates == 0 and not missed and not false_fires
    print(f"  verdict: {'PASS' if ok else 'FAIL'}")
    if missed or false_fires:
        print(f"  missed: {missed[:20]} false: {false_fires[:20]}")


if __name__ == "__main__":
    main()
