"""The execution engine with its real processes: an RQ worker (or two) and the scheduler, real Redis,
a real database file, the paper exchange. Each money-safety invariant has a test that fails if it breaks."""
from __future__ import annotations

import json

import pytest

from tests.conftest import wait_for
from tests.engine_helpers import (
    start,
    broker_orders,
    inject_faults,
    orders,
    send,
    started_strategy,
    status,
    run_event,
    trader,
    wait_status,
)
from webapp import redis_client
from webapp.engine import schedule
from webapp.engine.events import BUY, SELL, STOPLOSS

pytestmark = pytest.mark.slow


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def test_scheduled_buy_then_sell(client, engine, redis_conn):
    headers = trader(client, "t@example.com")
    sid = started_strategy(client, headers, buy_in=2, sell_in=4)
    assert status(client, headers, sid)["status"] == "waiting_entry"
    in_position = wait_status(client, headers, sid, "in_position")
    assert in_position["position"] == 10 and in_position["entry_price"] == "1520.35"
    done = wait_status(client, headers, sid, "completed")
    assert done["position"] == 0 and done["pnl"] == "0.00" and done["source"] == "database"
    log = orders(client, headers, sid)
    assert [(o["event"], o["side"], o["status"], o["attempt"]) for o in log] == [
        ("BUY", "BUY", "COMPLETE", 1), ("SELL", "SELL", "COMPLETE", 1)]
    assert all(o["tag"].isalnum() and len(o["tag"]) <= 20 for o in log)
    # Runtime keys are gone once the strategy is finished; nothing is left for the listener.
    assert not redis_conn.exists(f"runtime:{sid}", f"strategy:{sid}")
    assert redis_conn.zscore("symbol:INFY:strategies", sid) is None
    # Every process logs one JSON object a line, and grepping the event_id follows the BUY's whole life.
    buy_id = log[0]["event_id"]
    lines = [json.loads(line) for name in ("worker", "scheduler") for line in engine.log(name).splitlines()]
    trail = [line for line in lines if buy_id in json.dumps(line)]
    assert {"triggers enqueued", "event accepted", "placing order", "order final", "entered position"} <= {
        line["msg"] for line in trail}
    assert all(line["strategy_id"] == sid for line in trail if line.get("logger", "").startswith("engine"))
    # Never early: the engine logs each event's lateness against its instant.
    assert all(line["lateness_ms"] >= 0 for line in lines if line.get("msg") == "event accepted")


def test_the_same_buy_delivered_twice_places_one_order(app, client, engine, redis_conn):
    headers = trader(client, "d@example.com")
    sid = started_strategy(client, headers, buy_in=60, sell_in=120)
    event = run_event(BUY, sid)
    send(app, event)
    send(app, event)
    wait_status(client, headers, sid, "in_position")
    wait_for(lambda: "duplicate event dropped" in engine.log("worker") or
             "event dropped by the state machine" in engine.log("worker"), what="the second delivery to be dropped")
    assert broker_orders(redis_conn, event.event_id) == 1
    assert len(orders(client, headers, sid)) == 1


def test_broker_failing_twice_then_succeeding_places_one_order_in_three_attempts(client, engine, redis_conn):
    headers = trader(client, "f2@example.com")
    inject_faults(redis_conn, "unavailable", "unavailable")
    sid = started_strategy(client, headers, buy_in=2, sell_in=60)
    wait_status(client, headers, sid, "in_position")
    log = orders(client, headers, sid)
    assert [(o["attempt"], o["status"]) for o in log] == [(1, "ERROR"), (2, "ERROR"), (3, "COMPLETE")]
    assert broker_orders(redis_conn, log[0]["event_id"]) == 1


def test_broker_failing_three_times_fails_the_strategy_and_places_nothing_more(app, client, engine, redis_conn):
    headers = trader(client, "f3@example.com")
    inject_faults(redis_conn, "unavailable", "unavailable", "unavailable")
    sid = started_strategy(client, headers, buy_in=2, sell_in=60)
    failed = wait_status(client, headers, sid, "failed")
    assert "failed after 3 attempts" in failed["status_reason"] and failed["needs_attention"] is False
    assert [o["status"] for o in orders(client, headers, sid)] == ["ERROR"] * 3
    # Invariant 3: nothing is placed for a failed strategy, even if a trigger still arrives.
    send(app, run_event(SELL, sid))
    send(app, run_event(BUY, sid))
    wait_for(lambda: engine.log("worker").count("event dropped by the state machine") >= 2, what="events dropped")
    assert broker_orders(redis_conn, run_event(BUY, sid).event_id) == 0
    assert len(orders(client, headers, sid)) == 3


def test_timeout_after_the_broker_accepted_is_found_by_tag_not_placed_again(client, engine, redis_conn):
    headers = trader(client, "to@example.com")
    inject_faults(redis_conn, "timeout_after_accept")
    sid = started_strategy(client, headers, buy_in=2, sell_in=60)
    wait_status(client, headers, sid, "in_position")
    log = orders(client, headers, sid)
    assert len(log) == 1 and log[0]["status"] == "COMPLETE" and "found by tag" in log[0]["error"]
    assert broker_orders(redis_conn, log[0]["event_id"]) == 1


def test_timeout_before_the_broker_took_it_is_checked_then_retried(client, engine, redis_conn):
    headers = trader(client, "tb@example.com")
    inject_faults(redis_conn, "timeout")
    sid = started_strategy(client, headers, buy_in=2, sell_in=60)
    wait_status(client, headers, sid, "in_position")
    log = orders(client, headers, sid)
    assert [(o["attempt"], o["status"]) for o in log] == [(1, "NOT_PLACED"), (2, "COMPLETE")]
    assert broker_orders(redis_conn, log[0]["event_id"]) == 1
    assert "looked up order by tag" in engine.log("worker")


def test_rejection_is_a_visible_failure_not_a_position(client, engine, redis_conn):
    headers = trader(client, "rj@example.com")
    inject_faults(redis_conn, "reject")
    sid = started_strategy(client, headers, buy_in=2, sell_in=60)
    failed = wait_status(client, headers, sid, "failed")
    assert failed["position"] == 0 and "Margin" in failed["status_reason"]
    assert [o["status"] for o in orders(client, headers, sid)] == ["REJECTED"]


def test_stop_while_in_position_squares_off_with_exactly_one_sell(app, client, engine, redis_conn):
    headers = trader(client, "st@example.com")
    sid = started_strategy(client, headers, buy_in=2, sell_in=120)
    wait_status(client, headers, sid, "in_position")
    response = client.post(f"/api/v1/strategy/{sid}/stop", headers=headers)
    assert response.status_code == 202 and "selling 10 INFY" in response.json["message"]
    stopped = wait_status(client, headers, sid, "stopped")
    assert stopped["position"] == 0
    # The SELL trigger was cancelled, and a late SELL delivery is dropped.
    send(app, run_event(SELL, sid))
    wait_for(lambda: "event dropped by the state machine" in engine.log("worker"), what="late SELL dropped")
    assert [(o["event"], o["side"]) for o in orders(client, headers, sid)] == [("BUY", "BUY"), ("STOP", "SELL")]
    assert broker_orders(redis_conn, run_event(SELL, sid).event_id) == 0


def test_stop_before_entry_places_nothing(app, client, engine, redis_conn):
    headers = trader(client, "sb@example.com")
    sid = started_strategy(client, headers, buy_in=3, sell_in=60)
    assert client.post(f"/api/v1/strategy/{sid}/stop", headers=headers).status_code == 202
    wait_status(client, headers, sid, "stopped")
    assert client.post(f"/api/v1/strategy/{sid}/stop", headers=headers).status_code == 409
    # The BUY trigger is gone, and a BUY that still arrives is dropped: nothing reaches the broker.
    with app.app_context():
        assert schedule.scheduled_at(redis_client.current(), sid, BUY) is None
    send(app, run_event(BUY, sid))
    wait_for(lambda: "event dropped by the state machine" in engine.log("worker"), what="late BUY dropped")
    assert broker_orders(redis_conn, run_event(BUY, sid).event_id) == 0
    assert orders(client, headers, sid) == []


def test_start_is_idempotent_and_refused_after_buy_time(client, engine):
    headers = trader(client, "id@example.com")
    sid = started_strategy(client, headers, buy_in=60, sell_in=120)
    again = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert again.status_code == 200 and again.json["message"] == "Already running."
    from tests.engine_helpers import seconds_ahead
    from tests.helpers import api_strategy

    late = api_strategy(client, headers, buy_time=seconds_ahead(-5), sell_time=seconds_ahead(60))
    refused = client.post(f"/api/v1/strategy/{late}/start", headers=headers)
    assert refused.status_code == 409 and "has passed" in refused.json["message"]
    assert status(client, headers, late)["status"] == "created"


class TestTwoWorkers:
    @pytest.fixture
    def engine(self, processes):  # type: ignore[no-untyped-def]
        processes.start("worker", "jobs.worker")
        processes.start("worker2", "jobs.worker")
        processes.start("scheduler", "jobs.scheduler")
        return processes

    def test_fifty_strategies_on_one_symbol_each_buy_exactly_once(self, app, client, engine, redis_conn):
        headers = trader(client, "herd@example.com")
        from tests.engine_helpers import seconds_ahead
        from tests.helpers import api_strategy

        buy, sell = seconds_ahead(10), seconds_ahead(60)  # 50 STARTs fit on a loaded machine
        ids = [api_strategy(client, headers, name=f"s{i}", buy_time=buy, sell_time=sell) for i in range(50)]
        for sid in ids:
            start(client, headers, sid)
        # Every BUY is also delivered a second time, racing the first across the two workers.
        for sid in ids:
            send(app, run_event(BUY, sid))
        for sid in ids:
            wait_status(client, headers, sid, "in_position")
        for sid in ids:
            assert broker_orders(redis_conn, run_event(BUY, sid).event_id) == 1
            assert len(orders(client, headers, sid)) == 1
        assert "worker2" in engine.running

    def test_sell_and_stoploss_racing_place_exactly_one_exit(self, app, client, engine, redis_conn):
        headers = trader(client, "race@example.com")
        ids = [started_strategy(client, headers, buy_in=2, sell_in=120, name=f"r{i}") for i in range(10)]
        for sid in ids:
            wait_status(client, headers, sid, "in_position")
        for sid in ids:
            send(app, run_event(SELL, sid))
            send(app, run_event(STOPLOSS, sid))
        finals = [wait_for(lambda sid=sid: status(client, headers, sid)["status"] in ("completed", "stopped_loss")
                           and status(client, headers, sid), what="exit") for sid in ids]
        for sid, final in zip(ids, finals):
            exits = [o for o in orders(client, headers, sid) if o["side"] == "SELL"]
            assert len(exits) == 1, exits
            assert final["position"] == 0
            placed = broker_orders(redis_conn, run_event(SELL, sid).event_id) + broker_orders(
                redis_conn, run_event(STOPLOSS, sid).event_id)
            assert placed == 1
            # The log names the winner: the exit row's event is the one that acted.
            assert exits[0]["event"] == ("SELL" if final["status"] == "completed" else "STOPLOSS")


def test_a_session_that_expires_while_an_entry_is_followed_is_a_position_nobody_can_vouch_for(
        app, client, processes, redis_conn):
    """The broker took the BUY, then refused the session before its fill was known: it may have filled. The
    run fails flagged for a human (not "failed, nothing held") and the account asks for a login."""
    from webapp import keys
    from webapp.extensions import db
    from webapp.models import BrokerAccount

    processes.env = {**processes.env, "PAPER_FILL_MS": "3000"}  # polled before the fill is pushed
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    headers = trader(client, "expired@example.com")
    redis_conn.rpush(keys.paper_followup_faults(), "status:auth")
    sid = started_strategy(client, headers, buy_in=1, sell_in=60)
    failed = wait_status(client, headers, sid, "failed")
    assert failed["needs_attention"] and "it may have filled" in failed["status_reason"]
    assert broker_orders(redis_conn, run_event(BUY, sid).event_id) == 1
    with app.app_context():
        assert db.session.scalar(db.select(BrokerAccount.status)) == "login_required"
