"""Exits that keep trying, market-hours rules and recovery's stop-loss check (issue 12, parts 1–3), with real
worker and scheduler processes against the paper exchange."""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from tests.conftest import wait_for, wait_until_up
from tests.engine_helpers import (
    broker_orders,
    inject_faults,
    orders,
    run_event,
    started_strategy,
    status,
    trader,
    wait_status,
)
from tests.helpers import api_strategy
from webapp import clock, keys
from webapp.engine import runtime
from webapp.engine.events import SELL, STOPLOSS, Event
from webapp.extensions import db
from webapp.market_calendar import exchange_date, instant, next_trading_day
from webapp.models import Run, Strategy

pytestmark = pytest.mark.slow


def test_an_exit_refused_for_seconds_is_retried_until_it_goes_once_and_the_user_is_told(client, engine, redis_conn):
    headers = trader(client, "blip@example.com")
    sid = started_strategy(client, headers, buy_in=1, sell_in=3)
    wait_status(client, headers, sid, "in_position")
    # The SELL finds the broker unavailable for 7 tries: with the test's pauses (0.05, 0.1, then doubling)
    # that is over 5 s of refusals.
    inject_faults(redis_conn, *["unavailable"] * 7)
    told = wait_for(lambda: "Exit not done yet" in (status(client, headers, sid)["status_reason"] or "")
                    and status(client, headers, sid), what="the user told after the first failure")
    assert told["status"] == "in_position" and told["position"] == 10
    done = wait_status(client, headers, sid, "completed", timeout=30)
    assert done["position"] == 0 and not done["needs_attention"]
    sells = [o for o in orders(client, headers, sid) if o["side"] == "SELL"]
    assert [o["status"] for o in sells] == ["ERROR"] * 7 + ["COMPLETE"]
    assert broker_orders(redis_conn, run_event(SELL, sid).event_id) == 1


def test_a_refused_exit_is_tried_again_not_given_up(client, engine, redis_conn):
    headers = trader(client, "rms@example.com")
    sid = started_strategy(client, headers, buy_in=1, sell_in=3)
    wait_status(client, headers, sid, "in_position")
    inject_faults(redis_conn, "reject")
    done = wait_status(client, headers, sid, "completed", timeout=30)
    assert done["position"] == 0
    sells = [(o["status"], o["filled_quantity"]) for o in orders(client, headers, sid) if o["side"] == "SELL"]
    assert sells == [("REJECTED", 0), ("COMPLETE", 10)]


def _held(app, client, headers: dict, sell_time: str, product: str = "MIS") -> int:  # type: ignore[no-untyped-def]
    """A strategy in position from a run of today (as if its BUY had filled earlier)."""
    sid = api_strategy(client, headers, buy_time="15:00:00", sell_time=sell_time, product=product)
    with app.app_context():
        strategy = db.session.get(Strategy, sid)
        run = Run(strategy_id=sid, run_date=exchange_date(clock.now()).isoformat())
        db.session.add(run)
        db.session.flush()
        strategy.status, strategy.position, strategy.entry_price = "in_position", 10, Decimal("1500")
        strategy.run_id, strategy.run_date, strategy.last_action = run.id, run.run_date, "BUY"
        db.session.commit()
        from webapp import redis_client

        runtime.activate(redis_client.current(), strategy)
    return sid


class TestMarketHours:
    """The NSE calendar with the whole system's clock set to a trading day at 15:19:5x IST."""

    @pytest.fixture
    def app_overrides(self) -> dict:
        return {"TRADING_CALENDAR": "nse"}

    @pytest.fixture
    def at_cutoff(self, processes, monkeypatch):  # type: ignore[no-untyped-def]
        def run_at(hh: int, mm: int, ss: int) -> None:
            real = datetime.now(timezone.utc)
            day = next_trading_day(exchange_date(real), "nse")
            offset = (instant(day, time(hh, mm, ss)) - real).total_seconds()
            monkeypatch.setattr(clock, "OFFSET", timedelta(seconds=offset))
            processes.env = {**processes.env, "CLOCK_OFFSET_SECONDS": str(offset), "TRADING_CALENDAR": "nse",
                             "RECONCILE_SECONDS": "1", "MIS_SQUARE_OFF_LEAD_SECONDS": "5"}
        return run_at

    def test_mis_times_after_the_cutoff_are_refused_at_create_and_start(self, client, app, at_cutoff):
        at_cutoff(10, 0, 0)
        headers = trader(client, "cutoff@example.com")
        refused = client.post("/api/v1/strategy/create", headers=headers, json={
            "name": "late", "symbol": "INFY", "quantity": 1, "buy_time": "15:00", "sell_time": "15:25",
            "stop_loss": 1, "product": "MIS"})
        assert refused.status_code == 422 and "15:20" in refused.json["fields"]["sell_time"]
        delivery = client.post("/api/v1/strategy/create", headers=headers, json={
            "name": "cnc", "symbol": "INFY", "quantity": 1, "buy_time": "15:00", "sell_time": "15:25",
            "stop_loss": 1, "product": "CNC"})
        assert delivery.status_code in (200, 201)
        sid = api_strategy(client, headers, buy_time="15:00:00", sell_time="15:10:00")
        with app.app_context():  # as if saved before the cut-off setting changed
            db.session.get(Strategy, sid).sell_time = "15:25:00"
            db.session.commit()
        start = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
        assert start.status_code == 409 and "MIS" in start.json["message"]

    def test_an_open_mis_position_is_squared_off_before_the_cutoff(self, app, client, processes, at_cutoff,
                                                                  redis_conn):
        at_cutoff(15, 19, 50)
        headers = trader(client, "squareoff@example.com")
        sid = _held(app, client, headers, sell_time="15:19:59")
        processes.start("worker", "jobs.worker")
        processes.start("scheduler", "jobs.scheduler")
        done = wait_status(client, headers, sid, "completed", timeout=30)
        assert done["position"] == 0 and "squared off before the MIS cut-off 15:20:00" in done["status_reason"]
        assert broker_orders(redis_conn, Event.for_run(SELL, sid, _run(app, sid)).event_id) == 1

    def test_an_mis_exit_still_failing_at_the_cutoff_ends_as_squared_off_by_the_broker(
            self, app, client, processes, at_cutoff, redis_conn):
        at_cutoff(15, 19, 40)  # 20 s before the cut-off: processes slow to start on a loaded machine still fit
        processes.env["MIS_SQUARE_OFF_LEAD_SECONDS"] = "0"
        processes.start("worker", "jobs.worker")
        processes.start("scheduler", "jobs.scheduler")
        wait_until_up(redis_conn)
        headers = trader(client, "brokersquared@example.com")
        sid = started_strategy(client, headers, buy_in=3, sell_in=6)
        wait_status(client, headers, sid, "in_position")
        inject_faults(redis_conn, *["unavailable"] * 30)  # the SELL never gets through before 15:20
        done = wait_status(client, headers, sid, "completed", timeout=40)
        assert done["position"] == 0 and not done["needs_attention"]
        assert "squared off by the broker at the MIS cut-off" in done["status_reason"]
        assert broker_orders(redis_conn, run_event(SELL, sid).event_id) == 0
        assert "position squared off by the broker" in processes.log("worker")

    def test_a_sell_missed_past_the_close_is_flagged_not_sent(self, app, client, processes, at_cutoff, redis_conn):
        at_cutoff(15, 30, 5)
        headers = trader(client, "missed@example.com")
        sid = _held(app, client, headers, sell_time="15:29:00", product="CNC")
        processes.start("worker", "jobs.worker")
        processes.start("scheduler", "jobs.scheduler")
        failed = wait_status(client, headers, sid, "failed", timeout=30)
        assert failed["needs_attention"] and "market closed at 15:30" in failed["status_reason"]
        assert failed["position"] == 10
        assert broker_orders(redis_conn, Event.for_run(SELL, sid, _run(app, sid)).event_id) == 0
        assert orders(client, headers, sid) == []


def test_recovery_fires_a_breached_stop_the_listener_never_sent(app, client, processes, redis_conn):
    """No listener at all: the last price is below the stop, and no STOPLOSS of this run is recorded."""
    processes.env = {**processes.env, "RECONCILE_SECONDS": "1"}
    headers = trader(client, "nolistener@example.com")
    sid = started_strategy(client, headers, buy_in=1, sell_in=120, stop_loss="1400")
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    wait_status(client, headers, sid, "in_position")
    redis_conn.set(keys.last_price("NSE", "INFY"), "1390.00")
    stopped = wait_status(client, headers, sid, "stopped_loss", timeout=20)
    assert stopped["position"] == 0
    assert broker_orders(redis_conn, run_event(STOPLOSS, sid).event_id) == 1
    assert "stop-loss breached with no exit recorded" in processes.log("scheduler")


def _run(app, sid: int) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.get(Strategy, sid).run_id


def test_recovery_rebuilds_a_strategy_hash_without_its_run(app, client, processes, redis_conn):
    """A strategy started before runs existed has no run id in Redis, so the listener could not name its
    STOPLOSS: recovery writes it back from the database."""
    processes.env = {**processes.env, "RECONCILE_SECONDS": "1"}
    headers = trader(client, "prerun@example.com")
    sid = started_strategy(client, headers, buy_in=600, sell_in=1200)
    assert redis_conn.hdel(keys.strategy(sid), "run_id") == 1
    processes.start("scheduler", "jobs.scheduler")
    wait_for(lambda: redis_conn.hget(keys.strategy(sid), "run_id") == str(_run(app, sid)).encode(),
             what="the run id written back")
    assert '"rebuilt": [' in processes.log("scheduler")
