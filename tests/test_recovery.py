"""Recovery with real processes, killed for real: Redis wiped (FLUSHALL) under running strategies, the
scheduler killed across a buy time. The database is the truth; nothing is lost or doubled."""
from __future__ import annotations

import signal

import pytest

from tests.conftest import wait_for, wait_until_up
from tests.engine_helpers import orders, started_strategy, trader, wait_status
from webapp import keys

pytestmark = pytest.mark.slow


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


@pytest.fixture
def recovering(processes, redis_conn):  # type: ignore[no-untyped-def]
    processes.env = {**processes.env, "RECONCILE_SECONDS": "1", "MISSED_ENTRY_GRACE_SECONDS": "3"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    wait_until_up(redis_conn)
    return processes


def test_a_redis_wipe_restores_every_running_strategy(client, recovering, redis_conn):
    """Waiting, in position, and stopping (the STOP still queued) when Redis is wiped."""
    headers = trader(client, "wipe@example.com")
    held = started_strategy(client, headers, buy_in=1, sell_in=12, name="held")
    stopping = started_strategy(client, headers, buy_in=1, sell_in=60, name="stopping", symbol="SBIN",
                                 stop_loss="780")
    waiting = started_strategy(client, headers, buy_in=7, sell_in=13, name="waiting", symbol="TCS")
    wait_status(client, headers, held, "in_position")
    wait_status(client, headers, stopping, "in_position")
    recovering.kill("worker", signal.SIGKILL)  # nobody takes the STOP off its queue before the wipe
    assert client.post(f"/api/v1/strategy/{stopping}/stop", headers=headers).status_code == 202
    redis_conn.flushall()  # every trigger, runtime key and queue gone, as in a restart without persistence
    recovering.start("worker2", "jobs.worker")
    wait_for(lambda: redis_conn.exists(keys.strategy(held), keys.strategy(waiting)) == 2, timeout=10,
             what="runtime keys rebuilt from the database")
    assert redis_conn.zscore(keys.symbol_strategies("INFY"), held) is not None
    wait_status(client, headers, held, "completed", timeout=30)
    wait_status(client, headers, waiting, "completed", timeout=30)
    for sid in (held, waiting):
        assert [(o["event"], o["status"]) for o in orders(client, headers, sid)] == [
            ("BUY", "COMPLETE"), ("SELL", "COMPLETE")]
    wait_status(client, headers, stopping, "stopped", timeout=15)
    assert [(o["event"], o["side"], o["status"]) for o in orders(client, headers, stopping)] == [
        ("BUY", "BUY", "COMPLETE"), ("STOP", "SELL", "COMPLETE")]
    assert '"event": "recovery"' in recovering.log("scheduler")


def test_a_scheduler_killed_across_the_buy_time_still_buys_within_grace(client, recovering):
    headers = trader(client, "sched@example.com")
    sid = started_strategy(client, headers, buy_in=2, sell_in=60)
    recovering.kill("scheduler", signal.SIGKILL)
    wait_for(lambda: status_past_buy(client, headers, sid), timeout=10, what="the buy time to pass")
    # A grace window wider than a loaded machine's process start-up, so this checks the rule, not the timing.
    # The same rule for every process: the worker refuses a BUY past the grace window too.
    recovering.env = {**recovering.env, "MISSED_ENTRY_GRACE_SECONDS": "15"}
    recovering.kill("worker")
    recovering.start("worker2", "jobs.worker")
    recovering.start("scheduler2", "jobs.scheduler")
    wait_status(client, headers, sid, "in_position", timeout=20)
    assert [o["event"] for o in orders(client, headers, sid)] == ["BUY"]


def test_a_buy_lost_beyond_the_grace_window_stops_with_missed_entry(client, recovering, redis_conn):
    headers = trader(client, "missed@example.com")
    sid = started_strategy(client, headers, buy_in=1, sell_in=60)
    recovering.kill("scheduler", signal.SIGKILL)
    wait_for(lambda: status_past_buy(client, headers, sid, by=5), timeout=15, what="the grace window to pass")
    redis_conn.flushall()  # the registration is gone too
    recovering.start("scheduler2", "jobs.scheduler")
    stopped = wait_status(client, headers, sid, "stopped", timeout=20)
    assert stopped["status_reason"].startswith("missed entry")
    assert orders(client, headers, sid) == []


def status_past_buy(client, headers: dict, sid: int, by: float = 1) -> bool:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from webapp import clock
    from webapp.market_calendar import IST

    strategy = client.get(f"/api/v1/strategy/{sid}", headers=headers).json["strategy"]
    now = (clock.now() - timedelta(seconds=by)).astimezone(IST).strftime("%H:%M:%S")
    return now > strategy["buy_time"]


def test_a_strategy_running_under_an_engaged_kill_switch_is_stopped(app, client, recovering):
    """A START that raced the kill switch's sweep is caught by the reconciler."""
    from tests.helpers import db_scalar
    from webapp.extensions import db
    from webapp.models import KillSwitch, User

    headers = trader(client, "raced@example.com")
    sid = started_strategy(client, headers, buy_in=60, sell_in=120)
    with app.app_context():
        db.session.add(KillSwitch(user_id=db_scalar(app, db.select(User.id)), reason="drill"))
        db.session.commit()
    killed = wait_status(client, headers, sid, "killed", timeout=15)
    assert killed["position"] == 0 and orders(client, headers, sid) == []


def test_a_runtime_hash_from_before_exit_levels_is_rebuilt_not_stopped_as_corrupt(app, client, redis_conn):
    """Upgrading with strategies running: their hashes lack the level fields; recovery writes them from the
    database and leaves the run alone."""
    from webapp.engine import recovery, runtime

    headers = trader(client, "upgrade@example.com")
    sid = started_strategy(client, headers, buy_in=60, sell_in=120)
    redis_conn.hdel(keys.runtime(sid), *runtime.LEVEL_FIELDS)
    with app.app_context():
        report = recovery.reconcile()
    assert sid in report.rebuilt and sid not in report.corrupt
    assert redis_conn.hget(keys.runtime(sid), "direction") == b"long"
    assert client.get(f"/api/v1/strategy/status/{sid}", headers=headers).json["status"] == "waiting_entry"


def test_a_daily_loss_stop_lost_with_redis_is_resent_with_its_reason(app, client, recovering):
    """The risk watcher's STOP (stop_requested_at and stop_reason committed) never reached a queue: recovery
    sends it again, and the user reads why, not "stopped by you"."""
    from datetime import timedelta

    from webapp import clock
    from webapp.extensions import db
    from webapp.models import Strategy

    headers = trader(client, "halted@example.com")
    sid = started_strategy(client, headers, buy_in=1, sell_in=120)
    wait_status(client, headers, sid, "in_position")
    reason = "daily loss limit ₹2,000.00 hit: the day's P&L was −₹2,110.50 at 10:00 IST"
    with app.app_context():
        strategy = db.session.get(Strategy, sid)
        strategy.stop_requested_at, strategy.stop_reason = clock.now() - timedelta(seconds=5), reason
        db.session.commit()
    stopped = wait_status(client, headers, sid, "stopped", timeout=15)
    assert stopped["status_reason"] == reason and stopped["position"] == 0
    assert [o["event"] for o in orders(client, headers, sid)] == ["BUY", "STOP"]


@pytest.mark.parametrize("corrupt", [
    {"status": "waiting_entry"},  # as if the engine's Redis update after its commit was lost
    {"position": "7"},
    {"position": "lots"},
])
def test_a_corrupt_runtime_stops_the_strategy_squares_off_and_tells_a_human(app, client, recovering, redis_conn,
                                                                          corrupt):
    from sqlalchemy import select

    from tests.helpers import db_scalar
    from webapp.models import AuditEvent

    headers = trader(client, "corrupt@example.com")
    sid = started_strategy(client, headers, buy_in=1, sell_in=120)
    wait_status(client, headers, sid, "in_position")
    redis_conn.hset(keys.runtime(sid), mapping=corrupt)
    stopped = wait_status(client, headers, sid, "stopped", timeout=15)
    assert stopped["needs_attention"] and "corrupt" in stopped["status_reason"]
    assert stopped["position"] == 0
    # Squared off by the database's numbers: one SELL of the 10 shares held, whatever Redis claimed.
    assert [(o["event"], o["side"], o["quantity"], o["status"]) for o in orders(client, headers, sid)] == [
        ("BUY", "BUY", 10, "COMPLETE"), ("STOP", "SELL", 10, "COMPLETE")]
    assert db_scalar(app, select(AuditEvent.severity).where(AuditEvent.action == "runtime_corrupt")) == "critical"
    assert '"level": "CRITICAL"' in recovering.log("scheduler") and "runtime corrupt" in recovering.log("scheduler")


def test_a_worker_killed_after_the_broker_accepted_leaves_one_order_found_by_tag(client, processes, redis_conn):
    """kill -9 between the broker's accept and the engine's records: the intent row says SENDING, the
    broker has the order. Recovery resends the event; the engine looks the tag up and records the fill."""
    from tests.engine_helpers import broker_orders, inject_faults, run_event
    from webapp.engine.events import BUY

    processes.env = {**processes.env, "RECONCILE_SECONDS": "1", "LOCK_TIMEOUT_SECONDS": "3"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    wait_until_up(redis_conn)
    headers = trader(client, "crash@example.com")
    inject_faults(redis_conn, "slow_after_accept")  # the answer is held back 5 s after the order is booked
    sid = started_strategy(client, headers, buy_in=1, sell_in=120)
    event_id = run_event(BUY, sid).event_id
    wait_for(lambda: broker_orders(redis_conn, event_id) == 1, timeout=10, what="the broker to accept the BUY")
    processes.kill("worker", signal.SIGKILL)
    assert [o["status"] for o in orders(client, headers, sid)] == ["SENDING"]
    processes.start("worker2", "jobs.worker")
    held = wait_status(client, headers, sid, "in_position", timeout=30)
    assert held["position"] == 10 and held["entry_price"] is not None
    assert broker_orders(redis_conn, event_id) == 1
    rows = orders(client, headers, sid)
    assert [(o["event"], o["status"]) for o in rows] == [("BUY", "COMPLETE")]
    assert "found by tag" in rows[0]["error"]
    assert redis_conn.hget(keys.runtime(sid), "status") == b"in_position"


def test_a_buy_that_would_be_placed_again_after_the_grace_window_fails_instead(client, processes, redis_conn):
    """The broker never took the first attempt and the retry would come after the grace window (here 2 s,
    the retry's pause 3 s; a 1 s window was missed by the first attempt itself on a loaded machine): no late
    entry, the run fails with nothing placed."""
    from tests.engine_helpers import broker_orders, inject_faults, run_event
    from webapp.engine.events import BUY

    processes.env = {**processes.env, "MISSED_ENTRY_GRACE_SECONDS": "2", "ORDER_RETRY_BACKOFF": "3"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    wait_until_up(redis_conn)
    headers = trader(client, "late@example.com")
    inject_faults(redis_conn, "timeout")  # read timed out before the broker took it
    sid = started_strategy(client, headers, buy_in=1, sell_in=60)
    failed = wait_status(client, headers, sid, "failed", timeout=20)
    assert failed["status_reason"].startswith("missed entry") and failed["position"] == 0
    assert broker_orders(redis_conn, run_event(BUY, sid).event_id) == 0
    assert [o["status"] for o in orders(client, headers, sid)] == ["NOT_PLACED"]
