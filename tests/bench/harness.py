"""A throw-away system for one benchmark: private Redis, SQLite file, the app, real worker/scheduler
processes, and bulk set-up of users and strategies."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    cpu = "unknown cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(name: str, values_ms: list[float]) -> str:
    return (f"{name}: n={len(values_ms)} p50={statistics.median(values_ms):.2f} ms "
            f"p99={percentile(values_ms, 99):.2f} ms max={max(values_ms):.2f} ms min={min(values_ms):.2f} ms")


class System:
    def __init__(self, workdir: Path, redis_url: str, database_url: str) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.database_url = database_url
        self.procs: list[subprocess.Popen] = []
        self.redis_pid = 0
        self.env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "TRADING_CALENDAR": "always",
                    "INSTANCE_DIR": str(workdir / "instance"),
                    "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING")}

    def spawn(self, module: str, *args: str, **env: str) -> subprocess.Popen:
        log = open(self.workdir / f"{module}-{len(self.procs)}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env={**self.env, **env},
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop_module(self, module: str) -> None:
        for proc in [p for p in self.procs if module in p.args]:
            proc.terminate()
            proc.wait(timeout=15)
            self.procs.remove(proc)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()  # e.g. a web process still holding websockets open
                proc.wait()
        self.procs.clear()


@contextmanager
def system() -> Iterator[System]:
    workdir = Path(tempfile.mkdtemp(prefix="algo-bench-"))
    os.environ["INSTANCE_DIR"] = str(workdir / "instance")
    os.environ["TRADING_CALENDAR"] = "always"
    from jobs import redis_server

    port = redis_server.free_port()
    redis_proc = redis_server.start(port, workdir / "redis")
    sysm = System(workdir, f"redis://127.0.0.1:{port}/0",
                  os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{workdir / 'bench.sqlite3'}"))
    sysm.redis_pid = redis_proc.pid
    try:
        yield sysm
    finally:
        sysm.stop()
        redis_server.stop(redis_proc)
        print(f"  (process logs in {workdir})")


def make_app(sysm: System):  # type: ignore[no-untyped-def]
    from webapp import create_app
    from webapp.extensions import db

    app = create_app({"SQLALCHEMY_DATABASE_URI": sysm.database_url, "REDIS_URL": sysm.redis_url,
                      "TRADING_CALENDAR": "always", "LOG_LEVEL": "WARNING"}, process_name="bench")
    with app.app_context():
        db.create_all()
    return app


def create_strategies(app, users: int, per_user: int, buy_time: str, sell_time: str,  # type: ignore[no-untyped-def]
                      symbol: str = "INFY", symbols: list[str] | None = None, stops: list[float] | None = None,
                      times: list[tuple[str, str]] | None = None) -> list[int]:
    """Bulk set-up straight into the database (set-up is not what is measured)."""
    from webapp import crypto
    from webapp.extensions import db
    from webapp.models import BrokerAccount, Strategy, User

    ids = []
    with app.app_context():
        for u in range(users):
            user = User(email=f"bench-{uuid.uuid4().hex[:12]}@example.com", password_hash="x")
            db.session.add(user)
            db.session.flush()
            account = BrokerAccount(user_id=user.id, broker="paper", api_key_enc=crypto.encrypt("benchkey1"),
                                    api_secret_enc=crypto.encrypt("benchsecret"), api_key_last4="key1",
                                    access_token_enc=crypto.encrypt("benchtoken"))
            db.session.add(account)
            db.session.flush()
            for i in range(per_user):
                n = len(ids)
                strategy = Strategy(user_id=user.id, broker_account_id=account.id, name=f"b{u}-{i}",
                                    symbol=symbols[n % len(symbols)] if symbols else symbol, exchange="NSE",
                                    instrument_token=100000 + n, quantity=1,
                                    buy_time=times[n][0] if times else buy_time,
                                    sell_time=times[n][1] if times else sell_time,
                                    stop_loss=Decimal(str(stops[n])) if stops else Decimal("1"))
                db.session.add(strategy)
                db.session.flush()
                ids.append(strategy.id)
        db.session.commit()
    return ids


def start_all(app, ids: list[int]) -> None:  # type: ignore[no-untyped-def]
    from webapp.services import lifecycle
    from webapp.extensions import db
    from webapp.models import Strategy

    with app.app_context():
        for sid in ids:
            lifecycle.start(db.session.get(Strategy, sid))


def ist_after(seconds: float) -> tuple[str, float]:
    """A whole-second IST time at least `seconds` ahead, and its epoch."""
    from webapp import clock
    from webapp.market_calendar import IST

    moment = (clock.now() + timedelta(seconds=seconds + 1)).replace(microsecond=0)
    return moment.astimezone(IST).strftime("%H:%M:%S"), moment.timestamp()


def placed_times(app, ids: list[int]) -> dict[int, float]:
    """When the (paper) exchange received each strategy's BUY: epoch seconds, by strategy id."""
    from datetime import datetime

    from webapp import keys, redis_client

    with app.app_context():
        conn = redis_client.current()
        result = {}
        for key in conn.scan_iter(keys.paper_order("*"), count=1000):
            order = conn.hgetall(key)
            tag = order[b"tag"].decode()
            sid = int(tag.split("B")[0]) if "B" in tag else None
            if sid is not None and order[b"side"] == b"BUY":
                result[sid] = datetime.fromisoformat(order[b"placed_at"].decode()).timestamp()
        return result


def orders_placed(app) -> int:  # type: ignore[no-untyped-def]
    """The paper exchange's order counter: one GET, so waiting does not load the machine being measured."""
    from webapp import keys, redis_client

    with app.app_context():
        return int(redis_client.current().get(keys.paper_sequence()) or 0)


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def synthetic_instruments(path: Path, count: int, price: float = 1000.0) -> list[str]:
    """A paper catalogue of `count` symbols (Kite's CSV layout), for load that spans many instruments."""
    symbols = [f"SYM{n:03d}" for n in range(count)]
    rows = [f"{200000 + n},{(200000 + n) >> 8},{sym},SYNTHETIC {n},{price:.2f},,0,0.05,1,EQ,NSE,NSE"
            for n, sym in enumerate(symbols)]
    path.write_text("instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,"
                    "lot_size,instrument_type,segment,exchange\n" + "\n".join(rows) + "\n")
    return symbols


def put_in_position(app, ids: list[int], entry: float) -> None:  # type: ignore[no-untyped-def]
    """As if each BUY had filled: database first, then the runtime keys the listener reads."""
    from datetime import date

    from sqlalchemy import update

    from webapp import clock, redis_client
    from webapp.engine import runtime
    from webapp.extensions import db
    from webapp.market_calendar import exchange_date
    from webapp.models import Run, Strategy

    with app.app_context():
        today: date = exchange_date(clock.now())
        for sid in ids:
            run = Run(strategy_id=sid, run_date=today.isoformat())
            db.session.add(run)
            db.session.flush()
            db.session.execute(update(Strategy).where(Strategy.id == sid).values(
                status="in_position", position=1, entry_price=Decimal(str(entry)), run_date=today.isoformat(),
                run_id=run.id, last_action="BUY"))
        db.session.commit()
        conn = redis_client.current()
        for strategy in db.session.scalars(db.select(Strategy).where(Strategy.id.in_(ids))):
            runtime.activate(conn, strategy)


def redis_rtt_ms(url: str, samples: int = 300) -> list[float]:
    import redis

    conn = redis.Redis.from_url(url)
    values = []
    for _ in range(samples):
        started = time.perf_counter()
        conn.ping()
        values.append((time.perf_counter() - started) * 1000)
        time.sleep(0.005)
    return values


def kite_instruments(path: Path, count: int, price: float = 1000.0) -> dict[str, int]:
    """Like synthetic_instruments, but with tokens as Kite builds them for NSE equity (exchange_token << 8 | 1),
    so the Kite ticker protocol packs their prices in paise (a token's low byte is its segment: e.g. 3, CDS,
    would scale by 10^7). Returns symbol → instrument_token."""
    tokens = {f"SYM{n:03d}": (300000 + n) << 8 | 1 for n in range(count)}
    rows = [f"{token},{token >> 8},{sym},SYNTHETIC {sym},{price:.2f},,0,0.05,1,EQ,NSE,NSE"
            for sym, token in tokens.items()]
    path.write_text("instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,"
                    "lot_size,instrument_type,segment,exchange\n" + "\n".join(rows) + "\n")
    return tokens


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants so far; gone processes count 0."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total
