"""Kite mode end to end: the official kiteconnect client and KiteTicker, in real worker / scheduler /
listener processes, against a local fake Kite speaking Kite's wire formats (tests/fake_kite)."""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import select

from tests.engine_helpers import orders, seconds_ahead, start, started_strategy, status, wait_status
from tests.fake_kite import FakeKite
from tests.helpers import api_register, api_strategy, browser_login, csrf_token, db_scalar
from webapp.models import BrokerAccount

pytestmark = pytest.mark.slow


@pytest.fixture
def fake():  # type: ignore[no-untyped-def]
    with FakeKite(stall_seconds=2.5) as kite:
        yield kite


@pytest.fixture
def app_overrides(fake) -> dict:  # type: ignore[no-untyped-def]
    return {"BROKER": "kite", "FEED": "kite", "KITE_API_ROOT": fake.rest_url, "KITE_TICKER_ROOT": fake.ws_url,
            "KITE_LOGIN_URL": fake.login_url, "KITE_TIMEOUT_SECONDS": 1.0, "KITE_FEED_API_KEY": fake.api_key,
            "KITE_FEED_ACCESS_TOKEN": fake.access_token, "TRADING_CALENDAR": "always"}


def kite_trader(client, fake, email: str) -> dict:  # type: ignore[no-untyped-def]
    headers = api_register(client, email)
    response = client.post("/api/v1/broker/connect", headers=headers, json={
        "api_key": fake.api_key, "api_secret": fake.api_secret, "access_token": fake.access_token})
    assert response.status_code == 200, response.json
    return headers


def test_connect_validates_through_kite(client, fake):
    headers = api_register(client, "c@example.com")
    bad = client.post("/api/v1/broker/connect", headers=headers, json={
        "api_key": fake.api_key, "api_secret": fake.api_secret, "access_token": "wrongtoken123"})
    assert bad.status_code == 400 and bad.json["error"] == "BROKER_AUTH_FAILED"
    good = client.post("/api/v1/broker/connect", headers=headers, json={
        "api_key": fake.api_key, "api_secret": fake.api_secret, "access_token": fake.access_token})
    assert good.status_code == 200
    assert good.json["account"]["status"] == "connected" and good.json["account"]["login_required"] is False
    # In Kite mode symbols are checked against Kite's own instrument list.
    assert client.post("/api/v1/strategy/create", headers=headers, json={
        "name": "x", "symbol": "NOTONKITE", "quantity": 1, "buy_time": "09:20", "sell_time": "10:00",
        "stop_loss": 1}).json["fields"]["symbol"] == "NOTONKITE is not a known NSE instrument."
    assert api_strategy(client, headers, symbol="SBIN", stop_loss="800")


def test_log_in_with_kite_redirect_flow(app, client, fake):
    browser_login(client, "login@example.com")
    token = csrf_token(client, "/broker")
    response = client.post("/broker", data={"api_key": fake.api_key, "api_secret": fake.api_secret,
                                            "csrf_token": token})
    assert response.status_code == 303
    assert "Log in with Kite" in client.get("/broker").get_data(as_text=True)
    assert 'id="login-required"' in client.get("/strategies").get_data(as_text=True)

    to_kite = client.get("/broker/kite/login")
    assert to_kite.status_code == 302 and to_kite.headers["Location"].startswith(fake.login_url)
    query = parse_qs(urlparse(to_kite.headers["Location"]).query)
    assert query["api_key"] == [fake.api_key] and query["v"] == ["3"]
    state = parse_qs(query["redirect_params"][0])["state"][0]

    forged = client.get(f"/broker/kite/callback?status=success&request_token={fake.issue_request_token()}&state=x")
    assert forged.headers["Location"] == "/broker"
    assert db_scalar(app, select(BrokerAccount.status)) == "login_required"

    client.get("/broker/kite/login")  # a new login attempt, a new state
    state = parse_qs(parse_qs(urlparse(client.get("/broker/kite/login").headers["Location"]).query)
                     ["redirect_params"][0])["state"][0]
    back = client.get(f"/broker/kite/callback?status=success&request_token={fake.issue_request_token()}"
                      f"&state={state}")
    assert back.headers["Location"] == "/strategies"
    account = db_scalar(app, select(BrokerAccount))
    assert account.status == "connected" and account.access_token_expires_at is not None
    assert 'id="login-required"' not in client.get("/strategies").get_data(as_text=True)


def test_buy_at_time_then_a_breaching_tick_exits_by_stoploss(client, fake, engine):
    engine.start("listener", "jobs.listener")
    headers = kite_trader(client, fake, "sl@example.com")
    sid = started_strategy(client, headers, buy_in=2, sell_in=120, quantity=5, stop_loss="1500")
    entered = wait_status(client, headers, sid, "in_position")
    assert entered["entry_price"] == "1520.50"
    assert fake.wait_for_subscription(408065, timeout=10)
    fake.tick("NSE:INFY", 1499.0)
    final = wait_status(client, headers, sid, "stopped_loss")
    assert final["position"] == 0
    placed = fake.orders
    assert [(o["transaction_type"], o["status"], o["average_price"]) for o in placed] == [
        ("BUY", "COMPLETE", 1520.5), ("SELL", "COMPLETE", 1499.0)]
    assert [o["event"] for o in orders(client, headers, sid)] == ["BUY", "STOPLOSS"]


def test_sell_at_time(client, fake, engine):
    headers = kite_trader(client, fake, "sell@example.com")
    sid = started_strategy(client, headers, buy_in=2, sell_in=4, symbol="SBIN", stop_loss="700")
    wait_status(client, headers, sid, "completed")
    assert [(o["transaction_type"], o["tag"]) for o in fake.orders] == [
        ("BUY", orders(client, headers, sid)[0]["tag"]), ("SELL", orders(client, headers, sid)[1]["tag"])]


def test_token_expiry_mid_day_flags_the_account_and_the_position(client, fake, engine):
    headers = kite_trader(client, fake, "exp@example.com")
    held = started_strategy(client, headers, buy_in=2, sell_in=5, name="held")
    waiting = started_strategy(client, headers, buy_in=60, sell_in=120, name="waiting")
    wait_status(client, headers, held, "in_position")
    fake.expire_token()
    failed = wait_status(client, headers, held, "failed")
    assert failed["needs_attention"] is True and failed["position"] == 10
    assert "login required" in failed["status_reason"]
    sells = [o for o in orders(client, headers, held) if o["side"] == "SELL"]
    assert len(sells) == 1 and sells[0]["status"] == "ERROR"  # no blind retries against a dead session
    assert status(client, headers, waiting)["needs_attention"] is True
    assert client.get("/api/v1/broker", headers=headers).json["account"]["login_required"] is True
    client.post(f"/api/v1/strategy/{waiting}/stop", headers=headers)
    wait_status(client, headers, waiting, "stopped")
    refused = client.post(f"/api/v1/strategy/{waiting}/start", headers=headers)
    assert refused.status_code == 409 and "login required" in refused.json["message"]


def test_timeout_after_kite_accepted_places_exactly_one_order(client, fake, engine):
    headers = kite_trader(client, fake, "to@example.com")
    fake.time_out_next_order_after_accept()
    sid = started_strategy(client, headers, buy_in=2, sell_in=120)
    wait_status(client, headers, sid, "in_position", timeout=30)
    assert len(fake.orders) == 1
    log = orders(client, headers, sid)
    assert len(log) == 1 and log[0]["status"] == "COMPLETE" and "found by tag" in log[0]["error"]


def test_rms_rejection_is_a_visible_failure_and_no_position(client, fake, engine):
    headers = kite_trader(client, fake, "rms@example.com")
    fake.reject_next_order("RMS:Margin Exceeds, Required:15205.00, Available:100.00 for entity account-FK1234")
    sid = started_strategy(client, headers, buy_in=2, sell_in=120)
    failed = wait_status(client, headers, sid, "failed")
    assert failed["position"] == 0 and "Margin Exceeds" in failed["status_reason"]
    assert [o["status"] for o in orders(client, headers, sid)] == ["REJECTED"]


class TestBurst:
    @pytest.fixture
    def engine(self, processes):  # type: ignore[no-untyped-def]
        for name in ("worker", "worker2"):
            processes.start(name, "jobs.worker")
        processes.start("scheduler", "jobs.scheduler")
        return processes

    def test_thirty_orders_in_one_second_for_one_api_key_draw_no_429(self, client, fake, engine):
        headers = kite_trader(client, fake, "burst@example.com")
        buy, sell = seconds_ahead(10), seconds_ahead(120)  # 30 STARTs fit on a loaded machine
        ids = [api_strategy(client, headers, name=f"b{i}", buy_time=buy, sell_time=sell) for i in range(30)]
        for sid in ids:
            start(client, headers, sid)
        for sid in ids:
            wait_status(client, headers, sid, "in_position", timeout=30)
        assert len(fake.orders) == 30
        assert fake.throttled_times(fake.api_key) == []
        assert fake.max_rate(fake.api_key) <= 10


def test_an_error_body_without_error_type_is_looked_up_before_a_retry(client, fake, engine):
    """kiteconnect raises TypeError for {"status": "error"} with no error_type: the order may or may not
    have landed, so the tag is looked up first; here it had not, and one order is placed on the retry."""
    headers = kite_trader(client, fake, "typeerr@example.com")
    fake.fail_next(status=500, method="POST", path="/orders", body='{"status": "error", "message": "odd"}',
                   content_type="application/json")
    sid = started_strategy(client, headers, buy_in=2, sell_in=120)
    wait_status(client, headers, sid, "in_position")
    log = orders(client, headers, sid)
    assert [(o["attempt"], o["status"]) for o in log] == [(1, "NOT_PLACED"), (2, "COMPLETE")]
    assert "unreadable answer" in log[0]["error"] and len(fake.orders) == 1
    assert any(r.method == "GET" and r.path == "/orders" for r in fake.requests)  # the lookup by tag
