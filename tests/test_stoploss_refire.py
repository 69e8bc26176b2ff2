"""A breached stop fires until an exit is recorded (issue 12, part 1): a STOPLOSS whose job was lost (Redis
wiped before a worker took it), whose worker was killed before its intent commit, or whose job failed is
fired again by the listener with the same event id, and the position gets exactly one exit while the price
stays below the stop. Real worker, scheduler and listener processes, paused, killed and wiped for real;
the database made to refuse writes by a real SQLite write lock."""
from __future__ import annotations

import signal
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from rq import Queue
from rq.registry import FailedJobRegistry

from tests.conftest import wait_for
from tests.engine_helpers import broker_orders, log_entries, orders, run_event, started_strategy, trader, wait_status
from webapp.engine.events import STOPLOSS

pytestmark = pytest.mark.slow

STOP = "1500"  # INFY fills at 1520.35 on the paper exchange


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def start_engine(processes, reconcile_seconds: int):  # type: ignore[no-untyped-def]
    # A short re-fire pause and lock life keep the tests short (the defaults are 5 s and 15 s).
    processes.env = {**processes.env, "RECONCILE_SECONDS": str(reconcile_seconds), "STOPLOSS_REFIRE_SECONDS": "2",
                     "LOCK_TIMEOUT_SECONDS": "6"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    return processes


@pytest.fixture
def engine(processes):  # type: ignore[no-untyped-def]
    """Recovery (which checks stops too) runs only at boot: the listener alone must bring the exit."""
    return start_engine(processes, 3600)


@pytest.fixture
def reconciling_engine(processes):  # type: ignore[no-untyped-def]
    """Recovery every second: after a wipe it rebuilds the Redis keys the listener reads."""
    return start_engine(processes, 1)


def below_the_stop(tmp_path: Path) -> str:
    """A feed whose INFY ticks below the stop every half second for two minutes: the price stays breached."""
    path = tmp_path / "below.csv"
    path.write_text("offset_seconds,symbol,price\n" + "".join(f"{0.5 + i / 2},INFY,1490.0\n" for i in range(240)))
    return f"csv:{path}"


def in_position(client, email: str) -> tuple[dict, int]:  # type: ignore[no-untyped-def]
    headers = trader(client, email)
    sid = started_strategy(client, headers, buy_in=1, sell_in=300, stop_loss=STOP)
    wait_status(client, headers, sid, "in_position")
    return headers, sid



def logged(processes, name: str, msg: str, event_id: str) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for e in log_entries(processes, name) if e.get("msg") == msg and e.get("event_id") == event_id)


def one_exit(client, headers: dict, sid: int, processes, redis_conn) -> None:  # type: ignore[no-untyped-def]
    """Exactly one exit, at the broker and in the order log, once nothing more can come: the listener let
    the instrument go, and no STOPLOSS job waits in the queue."""
    final = wait_status(client, headers, sid, "stopped_loss", timeout=60)
    assert final["position"] == 0
    wait_for(lambda: any(e.get("event") == "feed_unsubscribe" for e in log_entries(processes, "listener")),
             what="INFY let go by the listener")
    wait_for(lambda: Queue("stoploss", connection=redis_conn).count == 0, what="every STOPLOSS job taken")
    exits = [o for o in orders(client, headers, sid) if o["event"] == STOPLOSS]
    assert [(o["side"], o["status"]) for o in exits] == [("SELL", "COMPLETE")]
    assert broker_orders(redis_conn, run_event(STOPLOSS, sid).event_id) == 1


def start_listener(processes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    processes.env = {**processes.env, "FEED": below_the_stop(tmp_path)}
    processes.start("listener", "jobs.listener")


def test_a_stoploss_wiped_from_redis_before_any_worker_took_it_is_fired_again(client, reconciling_engine,
                                                                               redis_conn, tmp_path):
    engine = reconciling_engine
    headers, sid = in_position(client, "wipe@example.com")
    event_id = run_event(STOPLOSS, sid).event_id
    worker = engine.running["worker"]
    worker.send_signal(signal.SIGSTOP)  # no worker takes anything while the STOPLOSS sits in Redis
    try:
        start_listener(engine, tmp_path)
        wait_for(lambda: Queue("stoploss", connection=redis_conn).count >= 1, what="the STOPLOSS queued")
        redis_conn.flushall()  # the queued job, the runtime keys, the lock: all gone
        # Recovery writes the strategy back; the listener's memory of the first fire must not stop it firing
        # the same event id again (recovery's own stop check may fire it too: still one exit).
        wait_for(lambda: logged(engine, "listener", "stop-loss breached", event_id)
                 + logged(engine, "listener", "stop-loss fired again: still in position", event_id) >= 2,
                 what="the listener firing the STOPLOSS again after the wipe")
    finally:
        worker.send_signal(signal.SIGCONT)
    one_exit(client, headers, sid, engine, redis_conn)


def test_a_worker_killed_before_its_intent_commit_leaves_the_exit_to_the_refire(app, client, engine, redis_conn,
                                                                                 tmp_path):
    headers, sid = in_position(client, "killed@example.com")
    event_id = run_event(STOPLOSS, sid).event_id
    with write_lock(app):  # the worker takes the STOPLOSS, then waits to commit its claim
        start_listener(engine, tmp_path)
        wait_for(lambda: logged(engine, "worker", "event accepted", event_id), what="the worker took the STOPLOSS")
        engine.kill("worker", signal.SIGKILL)
    engine.start("worker2", "jobs.worker")
    one_exit(client, headers, sid, engine, redis_conn)
    refires = [e for e in log_entries(engine, "listener")
               if e.get("msg") == "stop-loss fired again: still in position" and e.get("event_id") == event_id]
    assert refires and refires[0]["attempt"] == 2 and refires[0]["strategy_id"] == sid
    assert logged(engine, "worker2", "event accepted", event_id) >= 1


def test_a_failed_stoploss_job_is_fired_again(app, client, engine, redis_conn, tmp_path):
    headers, sid = in_position(client, "failed@example.com")
    event_id = run_event(STOPLOSS, sid).event_id
    failed = FailedJobRegistry("stoploss", connection=redis_conn)
    with write_lock(app):  # held past SQLite's busy timeout: the job's claim commit fails, so the job fails
        start_listener(engine, tmp_path)
        wait_for(lambda: failed.count >= 1, timeout=40, what="the STOPLOSS job failed")
    one_exit(client, headers, sid, engine, redis_conn)
    assert logged(engine, "listener", "stop-loss fired again: still in position", event_id) >= 1


@contextmanager
def write_lock(app) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Holds the test database's write lock (BEGIN IMMEDIATE) as another writer would: readers go on,
    every writer waits (SQLite's busy timeout, 15 s) and then fails."""
    conn = sqlite3.connect(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()
