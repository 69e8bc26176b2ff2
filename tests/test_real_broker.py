"""Orders as a real broker sees them (issue 11): Kite's 2026 order rules, a broker that answers in tens of
milliseconds and fills in hundreds, partial fills, follow-up errors, pushed fills, the fenced claim on
every attempt, one account's failure kept to itself, the lateness rule and exits that never wait behind
entries. Real worker, scheduler and listener processes; the real kiteconnect client against the fake Kite,
or the paper exchange with its faults."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import wait_for
from tests.engine_helpers import (
    start,
    broker_orders,
    inject_faults,
    orders,
    send,
    seconds_ahead,
    started_strategy,
    status,
    run_event,
    trader,
    wait_status,
)
from tests.fake_kite import Account, FakeKite
from tests.helpers import api_register, api_strategy
from webapp import clock, keys
from webapp.engine.events import BUY, STOPLOSS, Event, order_tag
from webapp.models import OrderLog

pytestmark = pytest.mark.slow


def paper_orders(conn, event_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """The paper exchange's own record of an event's orders."""
    tag = order_tag(event_id)
    found = []
    for key in conn.scan_iter(keys.paper_tag("*", tag)):
        for order_id in conn.lrange(key, 0, -1):
            found.append({k.decode(): v.decode() for k, v in conn.hgetall(keys.paper_order(order_id.decode())).items()})
    return found


# --- the paper exchange behaves like Kite -------------------------------------------------------------
class TestPaperExchange:
    @pytest.fixture
    def app_overrides(self) -> dict:
        return {"PAPER_LATENCY_MS": 60, "PAPER_FILL_MS": 300}

    def test_a_market_order_is_open_before_it_is_complete_and_calls_take_time(self, app, redis_conn):
        from webapp.brokers import OrderRequest, get_broker

        with app.app_context():
            broker = get_broker("paper", 1)
            started = time.monotonic()
            order_id = broker.place_order(OrderRequest("NSE", "INFY", "BUY", 10, "MIS", "T1B261125"))
            took = time.monotonic() - started
            first = broker.order_status(order_id)
            assert took >= 0.6 * 0.060 and first.status == "OPEN" and first.filled_quantity == 0
            final = wait_for(lambda: (s := broker.order_status(order_id)).final and s, timeout=5)
            assert final.status == "COMPLETE" and final.filled_quantity == 10 and final.average_price is not None
            # The fill was pushed too, as Kite's postbacks are.
            assert json.loads(redis_conn.get(keys.order_update(order_id)))["status"] == "COMPLETE"

    def test_partial_fill_then_cancel_and_a_follow_up_500(self, app, redis_conn):
        from webapp.brokers import BrokerUnavailable, OrderRequest, get_broker

        with app.app_context():
            broker = get_broker("paper", 1)
            inject_faults(redis_conn, "partial:4")
            order_id = broker.place_order(OrderRequest("NSE", "INFY", "BUY", 10, "MIS", "T2B261125"))
            redis_conn.rpush(keys.paper_followup_faults(), "error500")
            with pytest.raises(BrokerUnavailable, match="500"):
                broker.order_status(order_id)
            final = wait_for(lambda: (s := broker.order_status(order_id)).final and s, timeout=5)
            assert (final.status, final.filled_quantity) == ("CANCELLED", 4)

    def test_a_market_order_without_protection_is_refused(self, app):
        from webapp.brokers import OrderRejected, OrderRequest, get_broker

        with app.app_context(), pytest.raises(OrderRejected, match="market protection"):
            get_broker("paper", 1).place_order(OrderRequest("NSE", "INFY", "BUY", 1, "MIS", "T3B261125",
                                                            market_protection=0))


def test_market_protection_setting_is_checked_at_start_up(tmp_path, redis_url):
    from tests.conftest import make_app

    for bad in ("0", "150", "-5", "auto"):
        with pytest.raises(ValueError, match="MARKET_PROTECTION"):
            make_app(f"sqlite:///{tmp_path / 'x.sqlite3'}", redis_url, MARKET_PROTECTION=bad)
    assert make_app(f"sqlite:///{tmp_path / 'y.sqlite3'}", redis_url, MARKET_PROTECTION="2.5"
                    ).config["MARKET_PROTECTION"] == 2.5


def test_a_strategy_may_carry_its_own_algo_id(client):
    headers = trader(client, "algo@example.com")
    bad = client.post("/api/v1/strategy/create", headers=headers, json={
        "name": "x", "symbol": "INFY", "quantity": 1, "buy_time": "09:20", "sell_time": "10:00", "stop_loss": 1,
        "algo_id": "not valid!"})
    assert bad.status_code == 422 and "algo_id" in bad.json["fields"]
    sid = api_strategy(client, headers, algo_id="OWN7")
    assert client.get(f"/api/v1/strategy/{sid}", headers=headers).json["strategy"]["algo_id"] == "OWN7"


# --- paper mode through the real processes ------------------------------------------------------------
@pytest.fixture
def slow_paper(processes):  # type: ignore[no-untyped-def]
    processes.env = {**processes.env, "PAPER_LATENCY_MS": "50", "PAPER_FILL_MS": "200"}
    return processes


def test_partial_fill_then_cancel_holds_what_filled_and_sells_exactly_that(client, slow_paper, redis_conn):
    slow_paper.start("worker", "jobs.worker")
    slow_paper.start("scheduler", "jobs.scheduler")
    headers = trader(client, "partial@example.com")
    inject_faults(redis_conn, "partial:4")
    sid = started_strategy(client, headers, buy_in=2, sell_in=5, quantity=10)
    held = wait_status(client, headers, sid, "in_position")
    assert held["position"] == 4 and "Bought 4 of 10" in held["status_reason"]
    done = wait_status(client, headers, sid, "completed")
    assert done["position"] == 0 and done["pnl"] is not None
    rows = orders(client, headers, sid)
    assert [(o["side"], o["quantity"], o["filled_quantity"], o["status"]) for o in rows] == [
        ("BUY", 10, 4, "CANCELLED"), ("SELL", 4, 4, "COMPLETE")]
    assert [o["quantity"] for o in paper_orders(redis_conn, rows[1]["event_id"])] == ["4"]


def test_an_exit_filled_in_part_sells_the_rest_again(client, slow_paper, redis_conn):
    slow_paper.start("worker", "jobs.worker")
    slow_paper.start("scheduler", "jobs.scheduler")
    headers = trader(client, "partexit@example.com")
    sid = started_strategy(client, headers, buy_in=2, sell_in=4, quantity=10)
    wait_status(client, headers, sid, "in_position")
    inject_faults(redis_conn, "partial:3")
    wait_status(client, headers, sid, "completed")
    sells = [(o["quantity"], o["filled_quantity"], o["status"]) for o in orders(client, headers, sid)
             if o["side"] == "SELL"]
    assert sells == [(10, 3, "CANCELLED"), (7, 7, "COMPLETE")]


def test_a_500_on_the_follow_up_keeps_following_and_the_run_stays_in_position(client, slow_paper, redis_conn):
    slow_paper.start("worker", "jobs.worker")
    slow_paper.start("scheduler", "jobs.scheduler")
    headers = trader(client, "fu500@example.com")
    redis_conn.rpush(keys.paper_followup_faults(), *["error500"] * 3)
    sid = started_strategy(client, headers, buy_in=2, sell_in=60)
    held = wait_status(client, headers, sid, "in_position")
    assert held["position"] == 10 and not held["needs_attention"]
    assert [o["status"] for o in orders(client, headers, sid)] == ["COMPLETE"]
    assert broker_orders(redis_conn, run_event(BUY, sid).event_id) == 1


def test_a_500_on_placement_is_looked_up_by_tag_before_placing_again(client, slow_paper, redis_conn):
    slow_paper.start("worker", "jobs.worker")
    slow_paper.start("scheduler", "jobs.scheduler")
    headers = trader(client, "pl500@example.com")
    inject_faults(redis_conn, "error500")
    sid = started_strategy(client, headers, buy_in=2, sell_in=60)
    wait_status(client, headers, sid, "in_position")
    assert [(o["attempt"], o["status"]) for o in orders(client, headers, sid)] == [(1, "NOT_PLACED"), (2, "COMPLETE")]
    assert "looked up order by tag" in slow_paper.log("worker")
    assert broker_orders(redis_conn, run_event(BUY, sid).event_id) == 1


def test_a_lost_lock_and_a_recovery_resend_place_one_order(client, slow_paper, redis_conn, app):
    """Worker A has sent the BUY (the exchange holds its answer 5 s). Its lock is lost (deleted, as a Redis
    wipe or expiry would) and the event is resent, as recovery does: worker B takes the lock, finds A's
    claimed attempt, waits until A's call must be over, finds the order by tag and takes the row over.
    A's late answer cannot record over B's: exactly one order at the broker, one position."""
    slow_paper.env = {**slow_paper.env, "KITE_TIMEOUT_SECONDS": "2"}
    slow_paper.start("worker", "jobs.worker")
    slow_paper.start("scheduler", "jobs.scheduler")
    headers = trader(client, "fence@example.com")
    inject_faults(redis_conn, "slow_after_accept")
    sid = started_strategy(client, headers, buy_in=1, sell_in=120)
    event = run_event(BUY, sid)
    wait_for(lambda: broker_orders(redis_conn, event.event_id) == 1, timeout=10, what="the broker to accept")
    assert redis_conn.delete(keys.runtime_lock(sid)) == 1
    slow_paper.start("worker2", "jobs.worker")
    send(app, event)  # recovery's resend: the same event, its buy time kept
    held = wait_status(client, headers, sid, "in_position", timeout=30)
    assert held["position"] == 10
    wait_for(lambda: "taken over" in slow_paper.log("worker") + slow_paper.log("worker2")
             or "lock lost" in slow_paper.log("worker") + slow_paper.log("worker2"), timeout=15,
             what="the first holder to stand down")
    assert broker_orders(redis_conn, event.event_id) == 1
    rows = orders(client, headers, sid)
    assert [(o["event"], o["status"]) for o in rows] == [("BUY", "COMPLETE")]


def test_a_first_attempt_buy_half_an_hour_late_is_never_placed(client, slow_paper, redis_conn, app):
    slow_paper.start("worker", "jobs.worker")
    headers = trader(client, "late30@example.com")
    sid = started_strategy(client, headers, buy_in=3600, sell_in=7200)
    late = clock.now().replace(microsecond=0) - timedelta(minutes=30)
    send(app, replace(run_event(BUY, sid), timestamp=late.isoformat()))
    failed = wait_status(client, headers, sid, "failed")
    assert failed["status_reason"].startswith("missed entry") and failed["position"] == 0
    assert orders(client, headers, sid) == []
    assert broker_orders(redis_conn, run_event(BUY, sid).event_id) == 0


def test_an_exit_is_sent_while_the_entry_herd_is_still_in_flight(client, slow_paper, redis_conn, app):
    """The orders worker is busy with a herd whose answers the exchange holds for 5 s; a stop-loss breach
    meanwhile goes to the exits worker and reaches the broker at once."""
    slow_paper.start("worker", "jobs.worker", "orders")
    slow_paper.start("exits", "jobs.worker", "stoploss")
    slow_paper.start("scheduler", "jobs.scheduler")
    holder = trader(client, "holder@example.com")
    held = started_strategy(client, holder, buy_in=2, sell_in=120, name="held", stop_loss="1000")
    wait_status(client, holder, held, "in_position")
    headers = trader(client, "herd@example.com")  # another account: Kite's 10 orders/s is per account
    inject_faults(redis_conn, *["slow_after_accept"] * 20)
    buy = seconds_ahead(3)
    herd = [api_strategy(client, headers, name=f"h{i}", buy_time=buy, sell_time=seconds_ahead(120))
            for i in range(20)]
    for sid in herd:
        start(client, headers, sid)
    wait_for(lambda: sum(broker_orders(redis_conn, run_event(BUY, s).event_id) for s in herd) == 20,
             timeout=15, what="the herd at the broker")
    breach = time.monotonic()
    redis_conn.set(keys.last_price("NSE", "INFY"), "999.00")
    send(app, run_event(STOPLOSS, held))
    wait_for(lambda: paper_orders(redis_conn, run_event(STOPLOSS, held).event_id), timeout=10,
             what="the exit at the broker")
    sent_in = time.monotonic() - breach
    assert [status(client, headers, s)["status"] for s in herd] == ["waiting_entry"] * 20  # still in flight
    assert sent_in < 2.0, f"the exit took {sent_in:.2f} s to reach the broker behind the herd"
    wait_status(client, holder, held, "stopped_loss")
    for sid in herd:
        wait_status(client, headers, sid, "in_position", timeout=30)


# --- Kite mode: the real kiteconnect client against the fake Kite -------------------------------------
@pytest.fixture
def fake():  # type: ignore[no-untyped-def]
    other = Account(api_key="otherapikey", api_secret="otherapisecret", access_token="otheraccesstoken",
                    user_id="FK9999", request_token=None)
    with FakeKite([Account(), other], stall_seconds=2.5, latency=0.05, fill_delay=0.2) as kite:
        yield kite


@pytest.fixture
def kite_engine(processes):  # type: ignore[no-untyped-def]
    processes.env = {**processes.env, "KITE_ALGO_ID": "ALGO42"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    return processes


def kite_trader(client, account: Account, email: str) -> dict:  # type: ignore[no-untyped-def]
    headers = api_register(client, email)
    response = client.post("/api/v1/broker/connect", headers=headers, json={
        "api_key": account.api_key, "api_secret": account.api_secret, "access_token": account.access_token})
    assert response.status_code == 200, response.json
    return headers


class TestKite:
    @pytest.fixture
    def app_overrides(self, fake) -> dict:  # type: ignore[no-untyped-def]
        return {"BROKER": "kite", "FEED": "kite", "KITE_API_ROOT": fake.rest_url, "KITE_TICKER_ROOT": fake.ws_url,
                "KITE_LOGIN_URL": fake.login_url, "KITE_TIMEOUT_SECONDS": 1.0, "KITE_FEED_API_KEY": fake.api_key,
                "KITE_FEED_ACCESS_TOKEN": fake.access_token, "TRADING_CALENDAR": "always"}


    def test_every_order_carries_market_protection_and_the_algo_id(self, client, fake, kite_engine):
        headers = kite_trader(client, fake.account, "mp@example.com")
        default = started_strategy(client, headers, buy_in=2, sell_in=4)
        own = started_strategy(client, headers, buy_in=2, sell_in=4, name="own", symbol="SBIN", stop_loss="800",
                               algo_id="OWN7")
        wait_status(client, headers, default, "completed")
        wait_status(client, headers, own, "completed")
        sent = [(p["params"]["tradingsymbol"], p["params"]["market_protection"], p["params"]["algo_id"])
                for p in fake.placements]
        assert sorted(sent) == [("INFY", "-1", "ALGO42")] * 2 + [("SBIN", "-1", "OWN7")] * 2
        assert [o["status"] for o in fake.orders] == ["COMPLETE"] * 4

    def test_kite_partial_fill_then_cancel_sells_four_at_sell_time(self, client, fake, kite_engine):
        headers = kite_trader(client, fake.account, "kpart@example.com")
        fake.partial_fill_next(4)
        sid = started_strategy(client, headers, buy_in=2, sell_in=5, quantity=10)
        held = wait_status(client, headers, sid, "in_position")
        assert held["position"] == 4
        wait_status(client, headers, sid, "completed")
        assert [(o["transaction_type"], o["quantity"], o["filled_quantity"], o["status"]) for o in fake.orders] == [
            ("BUY", 10, 4, "CANCELLED"), ("SELL", 4, 4, "COMPLETE")]


    def test_kite_500s_on_order_history_keep_following(self, client, fake, kite_engine):
        headers = kite_trader(client, fake.account, "k500@example.com")
        fake.fail_next(3, status=500, method="GET", path="/orders/")
        sid = started_strategy(client, headers, buy_in=2, sell_in=60)
        held = wait_status(client, headers, sid, "in_position")
        assert held["position"] == 10 and not held["needs_attention"]
        assert len(fake.orders) == 1


    def test_a_broken_token_fails_only_that_accounts_strategies_in_a_shared_batch(self, client, fake, kite_engine):
        other = fake.accounts["otherapikey"]
        good = kite_trader(client, fake.account, "good@example.com")
        bad = kite_trader(client, other, "bad@example.com")
        buy, sell = seconds_ahead(3), seconds_ahead(120)
        good_ids = [api_strategy(client, good, name=f"g{i}", buy_time=buy, sell_time=sell) for i in range(3)]
        bad_ids = [api_strategy(client, bad, name=f"b{i}", buy_time=buy, sell_time=sell) for i in range(3)]
        for sid in good_ids:
            start(client, good, sid)
        for sid in bad_ids:
            start(client, bad, sid)
        fake.expire_token("otherapikey")
        for sid in good_ids:
            assert wait_status(client, good, sid, "in_position")["position"] == 10
        for sid in bad_ids:
            failed = wait_status(client, bad, sid, "failed")
            assert "login required" in failed["status_reason"] and failed["position"] == 0
        assert len(fake.orders_for(fake.api_key)) == 3 and fake.orders_for("otherapikey") == []
        assert '"count": 6' in kite_engine.log("scheduler")  # one instant, one batch for both accounts



class TestPostbacks:
    @pytest.fixture
    def app_overrides(self, fake) -> dict:  # type: ignore[no-untyped-def]
        return {"BROKER": "kite", "FEED": "simulated", "KITE_API_ROOT": fake.rest_url,
                "KITE_TIMEOUT_SECONDS": 1.0, "TRADING_CALENDAR": "always"}

    def test_fills_are_pushed_by_postback_when_polling_cannot_answer(self, client, fake, kite_engine, live_server):
        headers = kite_trader(client, fake.account, "push@example.com")
        fake.set_postback_url(f"{live_server}/broker/kite/postback")
        fake.fail_next(50, status=500, method="GET", path="/orders/")  # order_history answers 500 throughout
        sid = started_strategy(client, headers, buy_in=2, sell_in=60)
        held = wait_status(client, headers, sid, "in_position")
        assert held["position"] == 10
        assert [outcome for _, outcome in fake.postbacks] == [200]

    def test_a_forged_or_unknown_postback_is_refused_and_changes_nothing(self, client, fake, redis_conn, app):
        headers = kite_trader(client, fake.account, "forge@example.com")
        sid = api_strategy(client, headers)
        with app.app_context():
            from webapp.extensions import db

            db.session.add(OrderLog(strategy_id=sid, user_id=1, event="BUY", event_id=f"{sid}:BUY:20261125",
                                    side="BUY", quantity=10, tag=f"{sid}B261125", status="SENDING"))
            db.session.commit()
        body = {"order_id": "261125000000001", "order_timestamp": "2026-11-25 10:00:01", "status": "COMPLETE",
                "tag": f"{sid}B261125", "filled_quantity": 10, "average_price": 1520.5}
        signed = hashlib.sha256((body["order_id"] + body["order_timestamp"] + fake.api_secret).encode()).hexdigest()
        forged = client.post("/broker/kite/postback", json={**body, "checksum": "0" * 64})
        assert forged.status_code == 403
        unknown = client.post("/broker/kite/postback", json={**body, "tag": "999B261125", "checksum": signed})
        assert unknown.status_code == 403
        assert client.post("/broker/kite/postback", data="not json").status_code == 403
        assert redis_conn.get(keys.order_update(body["order_id"])) is None
        genuine = client.post("/broker/kite/postback", json={**body, "checksum": signed})
        assert genuine.status_code == 200
        again = client.post("/broker/kite/postback", json={**body, "checksum": signed})  # idempotent
        assert again.status_code == 200
        assert json.loads(redis_conn.get(keys.order_update(body["order_id"])))["filled_quantity"] == 10
        with app.app_context():
            from webapp.extensions import db

            assert db.session.scalar(select(OrderLog.status).where(OrderLog.strategy_id == sid)) == "SENDING"
