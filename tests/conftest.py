"""Shared fixtures: a private redis-server per test session, a fresh database per test, an app and
clients, and a live server + Debian chromium for browser tests."""
from __future__ import annotations

import os
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

# Generated secrets land in a throw-away instance dir, never the developer's instance/.
os.environ["INSTANCE_DIR"] = tempfile.mkdtemp(prefix="algo-test-instance-")
os.environ.pop("REDIS_URL", None)
os.environ.pop("DATABASE_URL", None)

import redis  # noqa: E402

from jobs import redis_server as redis_proc  # noqa: E402
from webapp import create_app  # noqa: E402
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
