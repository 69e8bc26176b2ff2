"""Stop-losses stay watched without a feed (issue 12, part 4): an instrument held in position with no ticks
is priced by REST quotes (the paper exchange's price, or Kite's ltp through the real kiteconnect client
against the fake Kite, within its 1 request/s quote limit) until ticks return; Kite mode with no market-data
account starts, trades on time and catches a stop-loss by quotes, and says why on /admin/health; the feed's
session is the account an admin picks, and a new token from that user's morning login is used without a
restart. Real worker, scheduler and listener processes."""
from __future__ import annotations

import json

import pytest
from kiteconnect import KiteConnect
from sqlalchemy import select

from tests.conftest import wait_for
from tests.engine_helpers import orders, started_strategy, trader, wait_status
from tests.fake_kite import Account, FakeKite
from tests.helpers import PASSWORD, api_register, browser_login, csrf_token, db_scalar, db_update
from webapp import keys
from webapp.models import AuditEvent, BrokerAccount, User

pytestmark = pytest.mark.slow
INFY = 408065  # its Kite instrument token


def listener_log(processes) -> list[dict]:  # type: ignore[no-untyped-def]
    entries = []
    for line in processes.log("listener").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def heartbeat(redis_conn) -> dict:  # type: ignore[no-untyped-def]
    raw = redis_conn.get(keys.LISTENER_HEARTBEAT)
    return json.loads(raw) if raw else {}


def quoted_stop_exit(processes, sid: int) -> dict:  # type: ignore[no-untyped-def]
    """The listener's STOPLOSS for this strategy, fired by a quote (not a tick)."""
    fired = [e for e in listener_log(processes) if e.get("msg") == "stop-loss breached" and e.get("strategy_id") == sid]
    assert [e["source"] for e in fired] == ["quote"]
    return fired[0]


def start_processes(processes, **env: str) -> None:  # type: ignore[no-untyped-def]
    # Recovery (which checks stops too) only at boot: the quotes alone must catch the stop.
    processes.env = {**processes.env, "RECONCILE_SECONDS": "3600", **env}
    for name, module in (("worker", "jobs.worker"), ("scheduler", "jobs.scheduler"), ("listener", "jobs.listener")):
        processes.start(name, module)


def login_page_client(app, email: str):  # type: ignore[no-untyped-def]
    page = app.test_client()
    page.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf_token(page, "/login")})
    return page


def admin_client(app, email: str = "boss@example.com"):  # type: ignore[no-untyped-def]
    admin = app.test_client()
    browser_login(admin, email)
    db_update(app, User, db_scalar(app, select(User.id).where(User.email == email)), is_admin=True)
    return admin


class TestPaper:
    @pytest.fixture
    def app_overrides(self) -> dict:
        return {"TRADING_CALENDAR": "always"}

    def test_no_ticks_for_a_held_symbol_then_its_stop_is_caught_by_quotes(self, app, client, processes, redis_conn,
                                                                          tmp_path):
        silent = tmp_path / "silent.csv"  # the feed knows INFY but never ticks it
        silent.write_text("offset_seconds,symbol,price\n")
        start_processes(processes, FEED=f"csv:{silent}", FEED_STALE_SECONDS="1")
        headers = trader(client, "quotes@example.com")
        sid = started_strategy(client, headers, buy_in=1, sell_in=300, stop_loss="1500")  # fills at 1520.35
        wait_status(client, headers, sid, "in_position")
        wait_for(lambda: heartbeat(redis_conn).get("quoted") == ["NSE:INFY"], what="INFY watched by quotes")
        critical = [e for e in listener_log(processes) if e.get("event") == "feed_quotes"]
        assert critical[0]["level"] == "CRITICAL" and critical[0]["instruments"] == ["NSE:INFY"]
        banner = login_page_client(app, "quotes@example.com").get("/strategies/cards").get_data(as_text=True)
        assert 'id="feed-stale"' in banner and "checked by the broker's REST quotes" in banner

        redis_conn.set(keys.last_price("NSE", "INFY"), "1490.00")  # the paper exchange moves; no tick comes
        final = wait_status(client, headers, sid, "stopped_loss")
        assert final["status_reason"] == "stop-loss hit at 1490.00" and final["position"] == 0
        assert [(o["event"], o["price"]) for o in orders(client, headers, sid)] == [("BUY", "1520.35"),
                                                                                    ("STOPLOSS", "1490.00")]
        assert quoted_stop_exit(processes, sid)["price"] == 1490.0


class TestKite:
    @pytest.fixture
    def fake(self):  # type: ignore[no-untyped-def]
        # Kite's quote limit, enforced: a second /quote call within a second is answered 429.
        with FakeKite(quote_limits=[(1, 1.0)],
                      accounts=[Account(), Account(api_key="datakey", api_secret="datasecret",
                                                   access_token="datatoken", user_id="FK9999")]) as kite:
            yield kite

    @pytest.fixture
    def app_overrides(self, fake) -> dict:  # type: ignore[no-untyped-def]
        return {"BROKER": "kite", "FEED": "kite", "KITE_API_ROOT": fake.rest_url, "KITE_TICKER_ROOT": fake.ws_url,
                "KITE_LOGIN_URL": fake.login_url, "KITE_TIMEOUT_SECONDS": 1.0, "KITE_FEED_API_KEY": "",
                "KITE_FEED_ACCESS_TOKEN": "", "TRADING_CALENDAR": "always"}

    def kite_trader(self, client, account: Account, email: str) -> dict:  # type: ignore[no-untyped-def]
        headers = api_register(client, email)
        response = client.post("/api/v1/broker/connect", headers=headers, json={
            "api_key": account.api_key, "api_secret": account.api_secret, "access_token": account.access_token})
        assert response.status_code == 200, response.json
        return headers

    def test_a_feed_without_ticks_for_a_held_symbol_falls_back_to_ltp_quotes(self, client, fake, processes):
        start_processes(processes, KITE_FEED_API_KEY="datakey", KITE_FEED_ACCESS_TOKEN="datatoken",
                        FEED_STALE_SECONDS="1")
        headers = self.kite_trader(client, fake.account, "kq@example.com")
        sid = started_strategy(client, headers, buy_in=2, sell_in=300, stop_loss="1500")
        assert wait_status(client, headers, sid, "in_position")["entry_price"] == "1520.50"
        assert fake.wait_for_subscription(INFY, timeout=10)  # subscribed on the feed's link, never ticked
        wait_for(lambda: any(e.get("event") == "feed_quotes" for e in listener_log(processes)),
                 what="INFY watched by quotes")
        fake.set_price("NSE", "INFY", 1490.0)  # the market moves; the ticker says nothing
        final = wait_status(client, headers, sid, "stopped_loss")
        assert final["status_reason"] == "stop-loss hit at 1490.00"
        assert [(o["transaction_type"], o["average_price"]) for o in fake.orders] == [("BUY", 1520.5),
                                                                                       ("SELL", 1490.0)]
        quoted_stop_exit(processes, sid)
        ltp = [r for r in fake.requests if r.path == "/quote/ltp"]
        assert ltp and {r.api_key for r in ltp} == {"datakey"}  # the feed's session prices everything
        assert fake.throttled_times() == [] and fake.max_rate("datakey", kind="quote") <= 1

    def test_no_feed_configured_still_trades_on_time_and_catches_a_stop_by_quotes(self, app, client, fake,
                                                                                  processes, redis_conn):
        start_processes(processes)
        wait_for(lambda: heartbeat(redis_conn), what="the listener up without a feed")
        assert "no market-data account" in heartbeat(redis_conn)["feed"]["reason"]
        admin = admin_client(app)
        health = admin.get("/admin/health").json
        assert health["feed"]["source"] is None and "no market-data account" in health["feed"]["reason"]

        headers = self.kite_trader(client, fake.account, "nofeed@example.com")
        timed = started_strategy(client, headers, buy_in=2, sell_in=5, name="timed", symbol="SBIN", stop_loss="700")
        held = started_strategy(client, headers, buy_in=2, sell_in=300, name="held", stop_loss="1500")
        wait_status(client, headers, held, "in_position")
        wait_status(client, headers, timed, "completed")  # BUY and SELL at their times, no feed needed
        wait_for(lambda: "NSE:INFY" in heartbeat(redis_conn).get("quoted", []), what="INFY watched by quotes")
        fake.set_price("NSE", "INFY", 1490.0)
        assert wait_status(client, headers, held, "stopped_loss")["status_reason"] == "stop-loss hit at 1490.00"
        quoted_stop_exit(processes, held)
        ltp = [r for r in fake.requests if r.path == "/quote/ltp"]
        assert ltp and {r.api_key for r in ltp} == {fake.api_key}  # the holder's own session
        assert fake.throttled_times() == [] and fake.max_rate(fake.api_key, kind="quote") <= 1
        assert fake.ticker_connection_count() == 0
        assert processes.running["listener"].poll() is None  # still running
        page = admin.get("/admin").get_data(as_text=True)
        assert "no Kite feed: no market-data account" in page

    def test_the_admin_picked_account_feeds_ticks_and_its_morning_login_is_picked_up(self, app, client, fake,
                                                                                     processes, redis_conn):
        start_processes(processes, FEED_SESSION_CHECK_SECONDS="1")
        data = self.kite_trader(client, fake.accounts["datakey"], "data@example.com")
        headers = self.kite_trader(client, fake.account, "pick@example.com")
        sid = started_strategy(client, headers, buy_in=2, sell_in=300, stop_loss="1500")
        wait_status(client, headers, sid, "in_position")

        admin = admin_client(app)
        account_id = db_scalar(app, select(BrokerAccount.id).join(User).where(User.email == "data@example.com"))
        token = csrf_token(admin, "/admin")
        for bad in ("999", "²", "9" * 30):
            assert admin.post("/admin/feed-account", data={"broker_account_id": bad, "csrf_token": token}
                              ).status_code == 303
            assert "No such Kite account." in admin.get("/admin").get_data(as_text=True)
        admin.post("/admin/feed-account", data={"broker_account_id": str(account_id), "csrf_token": token})
        assert db_scalar(app, select(AuditEvent.detail).where(AuditEvent.action == "market_feed_account")) == {
            "broker_account_id": account_id}
        assert fake.wait_for_subscription(INFY, timeout=10)
        assert fake.ticker_connection_count("datakey") == 1
        assert f"broker account #{account_id}" in admin.get("/admin/health").json["feed"]["source"]
        assert f'value="{account_id}" selected>data@example.com' in admin.get("/admin").get_data(as_text=True)

        # 06:00: the token dies and the link drops; the user logs in again in the morning.
        fake.expire_token("datakey")
        fake.drop_ticker_connections("datakey")
        fresh = KiteConnect("datakey", root=fake.rest_url).generate_session(
            fake.issue_request_token("datakey"), "datasecret")["access_token"]
        assert client.post("/api/v1/broker/connect", headers=data, json={
            "api_key": "datakey", "api_secret": "datasecret", "access_token": fresh}).status_code == 200
        wait_for(lambda: fake.ticker_connection_count("datakey") == 1 and any(
            INFY in subs for subs in fake.subscriptions("datakey")), timeout=15, what="the feed back on the new token")
        wait_for(lambda: heartbeat(redis_conn).get("quoted") == [], what="ticks, not quotes, watching INFY")
        fake.tick("NSE:INFY", 1490.0)
        assert wait_status(client, headers, sid, "stopped_loss")["status_reason"] == "stop-loss hit at 1490.00"
        fired = [e for e in listener_log(processes) if e.get("msg") == "stop-loss breached"]
        assert [e["source"] for e in fired] == ["tick"]
