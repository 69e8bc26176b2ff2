"""Shared fixtures: a private redis-server per test session, a fresh database per test, an app and
clients, and a live server + Debian chromium for browser tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

# Generated secrets land in a throw-away instance dir, never the developer's instance/.
os.environ["INSTANCE_DIR"] = tempfile.mkdtemp(prefix="algo-test-instance-")
os.environ.pop("REDIS_URL", None)
os.environ.pop("DATABASE_URL", None)
# The injected clock (webapp/clock.py): every process of this test session sees 10:00:00 IST at start, so
# "a few seconds ahead" never wraps past midnight, whenever the suite runs. Subprocesses inherit it.
_ist_now = datetime.now(timezone(timedelta(hours=5, minutes=30)))
os.environ["CLOCK_OFFSET_SECONDS"] = str(
    (_ist_now.replace(hour=10, minute=0, second=0, microsecond=0) - _ist_now).total_seconds()
)
ROOT = Path(__file__).resolve().parent.parent

import redis  # noqa: E402

from jobs import redis_server as redis_proc  # noqa: E402
from webapp import create_app, keys  # noqa: E402
from webapp.extensions import db  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    port = redis_proc.free_port()
    proc = redis_proc.start(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    redis_proc.stop(proc)


@pytest.fixture
def redis_conn(redis_url: str) -> redis.Redis:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    return conn


def make_app(database_url: str, redis_url: str, **overrides: object):  # type: ignore[no-untyped-def]
    return create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        "RATELIMIT_STORAGE_URI": redis_url,
        "RATELIMIT_KEY_PREFIX": uuid.uuid4().hex,  # each app its own limit counters
        # Production requires admins to have two-factor login on (the default); the admin tests make admins
        # with a password only. tests/test_two_factor.py turns the requirement on and tests it.
        "ADMIN_TWO_FACTOR_REQUIRED": False,
        **overrides,
    })


@pytest.fixture
def app_overrides() -> dict:
    """Override in a test module to change settings for its app."""
    return {}


@pytest.fixture
def app(tmp_path: Path, redis_conn: redis.Redis, redis_url: str, app_overrides: dict):  # type: ignore[no-untyped-def]
    """No app context is left pushed: each request must get its own, as in production, or `g` (and so
    the logged-in user) would leak from one client's request into another's. Tests that read the
    database open a short `with app.app_context():` of their own."""
    app = make_app(f"sqlite:///{tmp_path / 'test.sqlite3'}", redis_url, **app_overrides)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def live_server(app):  # type: ignore[no-untyped-def]
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


# pytest-playwright: Debian's chromium, headless, with the flags this machine needs.
@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class Processes:
    """Real worker / scheduler / listener processes for a test, each logging to its own file, which the
    test can kill (-9 for real) and start again."""

    def __init__(self, env: dict, logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, module: str, *args: str) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.running[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.running.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=15)

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.running.values():
            proc.terminate()
        for proc in self.running.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.running.clear()


@pytest.fixture
def processes(app, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {**os.environ,
           "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "REDIS_URL": app.config["REDIS_URL"],
           "TRADING_CALENDAR": app.config["TRADING_CALENDAR"],
           "ORDER_RETRY_BACKOFF": "0.05,0.1",
           "ORDER_CONFIRM_TIMEOUT": "5",
           "LOG_LEVEL": "INFO",
           # The broker and feed the test's app uses (a fake Kite's addresses in Kite tests).
           **{name: str(app.config[name]) for name in (
               "BROKER", "FEED", "PAPER_LATENCY_MS", "PAPER_FILL_MS", "KITE_API_ROOT", "KITE_TICKER_ROOT", "KITE_TIMEOUT_SECONDS",
               "KITE_FEED_API_KEY", "KITE_FEED_ACCESS_TOKEN", "KITE_LOGIN_URL")}}
    procs = Processes(env, tmp_path)
    yield procs
    procs.stop_all()
    for logfile in sorted(tmp_path.glob("*.log")):  # shown by pytest only when the test failed
        print(f"----- {logfile.name} (last 60 lines) -----")
        print("\n".join(logfile.read_text(errors="replace").splitlines()[-60:]))


@pytest.fixture
def engine(processes, redis_conn):  # type: ignore[no-untyped-def]
    """A real worker and scheduler for the test, up before it goes on."""
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    wait_until_up(redis_conn)
    return processes


def wait_until_up(conn: redis.Redis, workers: int = 1, scheduler: bool = True) -> None:
    """Tests schedule a few seconds ahead: they count from when the processes they need are up, not from
    when they were launched (on a loaded machine a process takes seconds to import, and a BUY a second
    ahead was then missed)."""
    from rq.worker_registration import REDIS_WORKER_KEYS

    wait_for(lambda: conn.scard(REDIS_WORKER_KEYS) >= workers
             and (not scheduler or conn.exists(keys.SCHEDULER_HEARTBEAT)), timeout=60, what="worker and scheduler up")


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Wait for a state, not for a time: returns as soon as predicate() is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
