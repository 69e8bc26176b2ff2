"""Issue 15, part 5: each account's Kite calls leave through its own outbound proxy (its registered static IP),
with the algo id on every order; an unreachable proxy is "unknown: look the tag up", never a rejection; the
proxy's password is never shown; and the audit log is exported as CSV for admins."""
from __future__ import annotations

import base64
import csv
import http.client
import io
import socket
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from tests.engine_helpers import orders, started_strategy, wait_status
from tests.fake_kite import Account, FakeKite
from tests.helpers import api_register, browser_login, csrf_token, db_scalar, db_update
from webapp.extensions import db
from webapp.models import AuditEvent, BrokerAccount, User

HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "transfer-encoding", "te", "trailer",
       "upgrade", "content-length"}


class ForwardProxy:
    """A tiny forward HTTP proxy: absolute-URI requests (`POST http://host:port/path HTTP/1.1`) are relayed
    to their target directly, and each is recorded (method, URL, form body, Proxy-Authorization)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.drop_placement_answers = 0  # relay this many order placements, then hang up instead of answering
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.seen.append({"method": self.command, "url": self.path, "body": body.decode(),
                                       "proxy_auth": self.headers.get("Proxy-Authorization"),
                                       "authorization": self.headers.get("Authorization")})
                target = urlsplit(self.path)
                if target.scheme != "http" or not target.hostname:
                    self.send_error(400, "absolute http:// URI expected")
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=10)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    path = target.path + (f"?{target.query}" if target.query else "")
                    conn.request(self.command, path or "/", body=body or None, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                with proxy.lock:
                    drop = self.command == "POST" and target.path == "/orders/regular" \
                        and proxy.drop_placement_answers > 0
                    proxy.drop_placement_answers -= drop
                if drop:  # the order reached Kite; its answer is lost on the way back
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = relay

            def do_CONNECT(self) -> None:  # never needed: the fake Kite is plain HTTP
                with proxy.lock:
                    proxy.seen.append({"method": "CONNECT", "url": self.path, "body": "", "proxy_auth": None,
                                       "authorization": None})
                self.send_error(405, "CONNECT not supported by this test proxy")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def __enter__(self) -> "ForwardProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self) -> list[dict]:
        with self.lock:
            return list(self.seen)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake():  # type: ignore[no-untyped-def]
    other = Account(api_key="otherapikey", api_secret="otherapisecret", access_token="otheraccesstoken",
                    user_id="FK9999", request_token=None)
    with FakeKite([Account(), other], latency=0.02, fill_delay=0.1) as kite:
        yield kite


@pytest.fixture
def proxy():  # type: ignore[no-untyped-def]
    with ForwardProxy() as p:
        yield p


@pytest.fixture
def app_overrides(fake) -> dict:  # type: ignore[no-untyped-def]
    return {"BROKER": "kite", "FEED": "kite", "KITE_API_ROOT": fake.rest_url, "KITE_TICKER_ROOT": fake.ws_url,
            "KITE_LOGIN_URL": fake.login_url, "KITE_TIMEOUT_SECONDS": 1.0, "KITE_FEED_API_KEY": fake.api_key,
            "KITE_FEED_ACCESS_TOKEN": fake.access_token, "TRADING_CALENDAR": "always", "KITE_ALGO_ID": "ALGO42"}


def connect(client, account: Account, email: str, proxy_url: str | None = None):  # type: ignore[no-untyped-def]
    headers = api_register(client, email)
    body = {"api_key": account.api_key, "api_secret": account.api_secret, "access_token": account.access_token}
    if proxy_url is not None:
        body["proxy"] = proxy_url
    return headers, client.post("/api/v1/broker/connect", headers=headers, json=body)


# --- (a) orders leave through the account's own proxy, with the algo id; another account goes direct -----------
@pytest.mark.slow
def test_orders_leave_through_the_accounts_proxy_with_the_algo_id(client, fake, proxy, processes):
    processes.env = {**processes.env, "KITE_ALGO_ID": "ALGO42"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    proxied, answer = connect(client, fake.account, "proxied@example.com", f"http://algo:s3cretpw@127.0.0.1:{proxy.port}")
    assert answer.status_code == 200, answer.json
    assert answer.json["account"]["proxy"] == f"http://127.0.0.1:{proxy.port}"
    direct, answer = connect(client, fake.accounts["otherapikey"], "direct@example.com")
    assert answer.status_code == 200 and answer.json["account"]["proxy"] is None

    ours = started_strategy(client, proxied, buy_in=2, sell_in=4)
    theirs = started_strategy(client, direct, buy_in=2, sell_in=4, symbol="SBIN", stop_loss="800")
    wait_status(client, proxied, ours, "completed", timeout=30)
    wait_status(client, direct, theirs, "completed", timeout=30)

    seen = proxy.requests()
    # Every call the proxy relayed was the proxied account's, with the proxy's credentials, never CONNECT.
    assert seen and all(r["method"] != "CONNECT" for r in seen)
    assert all(r["proxy_auth"] == "Basic " + base64.b64encode(b"algo:s3cretpw").decode() for r in seen)
    assert all(r["authorization"] == f"token {fake.api_key}:{fake.access_token}" for r in seen)
    # The credential check at connect went through it too.
    assert any(r["method"] == "GET" and urlsplit(r["url"]).path == "/user/profile" for r in seen)
    placed = [r for r in seen if r["method"] == "POST" and r["url"] == f"{fake.rest_url}/orders/regular"]
    assert len(placed) == 2  # the BUY and the SELL
    forms = [parse_qs(r["body"]) for r in placed]
    assert [f["algo_id"] for f in forms] == [["ALGO42"], ["ALGO42"]]
    assert sorted(f["transaction_type"][0] for f in forms) == ["BUY", "SELL"]
    assert {f["tradingsymbol"][0] for f in forms} == {"INFY"}
    # The direct account's orders reached Kite (with the algo id) without touching the proxy.
    assert len(fake.orders_for("otherapikey")) == 2 and len(fake.orders_for(fake.api_key)) == 2
    assert not any("otherapikey" in (r["authorization"] or "") for r in seen)
    assert sorted(p["params"]["algo_id"] for p in fake.placements) == ["ALGO42"] * 4


# --- (b) an unreachable proxy: unknown, look the tag up; never a rejection -----------------------------------------
def test_an_unreachable_proxy_is_an_unknown_placement_not_a_rejection(fake):
    from webapp.brokers import BrokerTimeout, BrokerUnavailable, Credentials, OrderRejected, OrderRequest
    from webapp.brokers.kite import KiteBroker

    dead = f"http://127.0.0.1:{closed_port()}"
    broker = KiteBroker(fake.rest_url, Credentials(fake.api_key, fake.api_secret, fake.access_token, dead),
                        timeout=1.0)
    with pytest.raises(BrokerTimeout) as placed:
        broker.place_order(OrderRequest("NSE", "INFY", "BUY", 1, "MIS", "PX1B261125", algo_id="ALGO42"))
    assert not isinstance(placed.value, OrderRejected)
    assert "proxy" in str(placed.value).lower()
    # The follow-up (the tag lookup) through the same dead proxy is "try again", never a final answer.
    with pytest.raises(BrokerUnavailable):
        broker.orders_by_tag("PX1B261125")
    assert fake.placements == []  # nothing reached Kite
    # Without the proxy the same client setup reaches Kite: only this account's calls use it.
    direct = KiteBroker(fake.rest_url, Credentials(fake.api_key, fake.api_secret, fake.access_token), timeout=1.0)
    assert direct.orders_by_tag("PX1B261125") == []


@pytest.mark.slow
def test_a_placement_whose_answer_the_proxy_lost_is_found_by_tag_not_placed_twice(client, fake, proxy, processes):
    """The proxy relays the BUY to Kite and hangs up before the answer: for the engine that is "unknown" (a
    ConnectionError through the proxy, BrokerTimeout), so it looks the tag up, through the proxy, finds the
    order and follows it: one BUY at Kite, never a rejection, never a second BUY."""
    processes.env = {**processes.env, "KITE_ALGO_ID": "ALGO42"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    headers, answer = connect(client, fake.account, "lost@example.com", f"http://127.0.0.1:{proxy.port}")
    assert answer.status_code == 200, answer.json
    proxy.drop_placement_answers = 1
    sid = started_strategy(client, headers, buy_in=2, sell_in=5)
    wait_status(client, headers, sid, "completed", timeout=30)
    assert proxy.drop_placement_answers == 0  # the BUY's answer was lost
    assert [(o["transaction_type"], o["status"]) for o in fake.orders] == [("BUY", "COMPLETE"), ("SELL", "COMPLETE")]
    seen = [(r["method"], urlsplit(r["url"]).path) for r in proxy.requests()]
    dropped = seen.index(("POST", "/orders/regular"))
    assert ("GET", "/orders") in seen[dropped + 1:]  # the tag lookup, through the proxy
    assert "REJECTED" not in {r["status"] for r in orders(client, headers, sid)}


# --- (c) the proxy's password is never shown -------------------------------------------------------------------
def test_the_proxy_is_validated_and_shown_masked(client, fake, proxy, app):
    url = f"http://algo:s3cretpw@127.0.0.1:{proxy.port}"
    headers, answer = connect(client, fake.account, "mask@example.com", "socks5://127.0.0.1:1080")
    assert answer.status_code == 422 and "proxy" in answer.json["fields"]
    for bad in ("http://127.0.0.1", "ftp://h:21", "http://h:1/path", "not a url", "http://h:99999", 7):
        body = {"api_key": fake.api_key, "api_secret": fake.api_secret, "access_token": fake.access_token,
                "proxy": bad}
        refused = client.post("/api/v1/broker/connect", headers=headers, json=body)
        assert refused.status_code == 422 and "proxy" in refused.json["fields"], bad
    body = {"api_key": fake.api_key, "api_secret": fake.api_secret, "access_token": fake.access_token, "proxy": url}
    saved = client.post("/api/v1/broker/connect", headers=headers, json=body)
    assert saved.status_code == 200, saved.json
    shown = client.get("/api/v1/broker", headers=headers)
    assert shown.json["account"]["proxy"] == f"http://127.0.0.1:{proxy.port}"
    assert "s3cretpw" not in shown.get_data(as_text=True) and "algo:" not in shown.get_data(as_text=True)
    stored = db_scalar(app, select(BrokerAccount.proxy_url_enc).join(User).where(User.email == "mask@example.com"))
    assert stored and b"s3cretpw" not in stored  # encrypted at rest

    # The Broker page: the field, a refusal marked on it, and the saved proxy shown masked.
    page = app.test_client()
    browser_login(page, "maskpage@example.com")
    form = {"api_key": fake.api_key, "api_secret": fake.api_secret, "access_token": fake.access_token,
            "csrf_token": csrf_token(page, "/broker")}
    html = page.post("/broker", data={**form, "proxy": "socks5://127.0.0.1:1080"}).get_data(as_text=True)
    assert 'id="e-proxy"' in html and "Nothing was saved" in html
    assert page.post("/broker", data={**form, "proxy": url}).status_code == 303
    html = page.get("/broker").get_data(as_text=True)
    assert f"http://127.0.0.1:{proxy.port}" in html and "s3cretpw" not in html
    assert "Outbound proxy (your registered static IP)" in html and "leave empty to send directly" in html

    # Saving the page again with the field empty (a new day's token) keeps the proxy; the box removes it.
    assert page.post("/broker", data=form).status_code == 303
    assert f"http://127.0.0.1:{proxy.port}" in page.get("/broker").get_data(as_text=True)
    assert page.post("/broker", data={**form, "proxy_remove": "1"}).status_code == 303
    assert "Kite calls leave directly from this server" in page.get("/broker").get_data(as_text=True)

    # The API: "proxy" left out keeps it (a script refreshing the token must not send orders direct); "" removes.
    body.pop("proxy")
    assert client.post("/api/v1/broker/connect", headers=headers, json=body).json["account"]["proxy"] == \
        f"http://127.0.0.1:{proxy.port}"
    assert client.post("/api/v1/broker/connect", headers=headers, json={**body, "proxy": ""}).json["account"][
        "proxy"] is None
    assert db_scalar(app, select(BrokerAccount.proxy_url_enc).join(User).where(User.email == "mask@example.com")) \
        is None


# --- (d) the audit log as CSV -------------------------------------------------------------------------------------
def admin_client(app, email: str = "boss@example.com"):  # type: ignore[no-untyped-def]
    client = app.test_client()
    browser_login(client, email)
    db_update(app, User, db_scalar(app, select(User.id).where(User.email == email)), is_admin=True)
    return client


def rows_of(response) -> list[dict]:  # type: ignore[no-untyped-def]
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_the_audit_log_exports_as_csv_for_admins_only(app):
    admin = admin_client(app)
    trader = app.test_client()
    browser_login(trader, "=evil@example.com")
    trader_id = db_scalar(app, select(User.id).where(User.email == "=evil@example.com"))
    admin_id = db_scalar(app, select(User.id).where(User.email == "boss@example.com"))
    with app.app_context():
        db.session.add_all([
            # 2026-11-20 23:00 IST is 17:30 UTC; 2026-11-21 00:30 IST is 2026-11-20 19:00 UTC.
            AuditEvent(actor_user_id=admin_id, subject_user_id=trader_id, action="user_disabled",
                       created_at=datetime(2026, 11, 20, 17, 30, tzinfo=timezone.utc)),
            AuditEvent(actor_user_id=admin_id, subject_user_id=trader_id, strategy_id=7, action="strategy_failed",
                       severity="critical", detail={"reason": "=HYPERLINK(\"http://x\")", "position": 3},
                       created_at=datetime(2026, 11, 20, 19, 0, tzinfo=timezone.utc)),
            AuditEvent(actor_user_id=None, subject_user_id=None, action="kill_switch_engaged",
                       detail={"reason": "+1", "scope": "global"},
                       created_at=datetime(2026, 11, 23, 5, 0, tzinfo=timezone.utc)),
        ])
        db.session.commit()

    assert trader.get("/admin/audit.csv").status_code == 404
    assert app.test_client().get("/admin/audit.csv").status_code == 404  # anonymous

    everything = admin.get("/admin/audit.csv")
    assert everything.status_code == 200
    assert everything.headers["Content-Type"].startswith("text/csv")
    assert everything.headers["Content-Disposition"] == 'attachment; filename="audit.csv"'
    assert everything.headers["Cache-Control"] == "no-store"
    rows = rows_of(everything)
    assert [r["action"] for r in rows] == ["user_disabled", "strategy_failed", "kill_switch_engaged"]
    first, second, third = rows
    assert first["time_utc"] == "2026-11-20T17:30:00+00:00" and first["time_ist"] == "2026-11-20T23:00:00+05:30"
    assert first["actor_email"] == "boss@example.com"
    assert first["subject_email"] == "'=evil@example.com"  # formula-safe
    assert second["strategy_id"] == "7" and second["severity"] == "critical"
    assert second["detail"].startswith("{") and '"position": 3' in second["detail"]
    assert third["actor_email"] == "" and third["subject_email"] == "" and third["detail"].startswith("{")
    for row in rows:
        assert not any(str(cell).startswith(("=", "+", "-", "@")) for cell in row.values()), row

    # IST dates, inclusive: the 21st (IST) holds only the 00:30 IST event.
    day = admin.get("/admin/audit.csv?from=2026-11-21&to=2026-11-21")
    assert [r["action"] for r in rows_of(day)] == ["strategy_failed"]
    assert 'filename="audit-from-2026-11-21-to-2026-11-21.csv"' in day.headers["Content-Disposition"]
    assert [r["action"] for r in rows_of(admin.get("/admin/audit.csv?to=2026-11-20"))] == ["user_disabled"]
    assert [r["action"] for r in rows_of(admin.get("/admin/audit.csv?from=2026-11-22"))] == ["kill_switch_engaged"]
    assert admin.get("/admin/audit.csv?from=yesterday").status_code == 400

    page = admin.get("/admin").get_data(as_text=True)
    assert 'href="/admin/audit.csv"' in page


def test_audit_events_outlive_their_user_and_strategy(app):
    """Retention: the app never deletes audit rows; deleting a user sets their ids to NULL (ON DELETE SET NULL),
    and strategy_id is a plain column, so deleting a strategy keeps its events."""
    client = app.test_client()
    browser_login(client, "gone@example.com")
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "gone@example.com"))
        db.session.add(AuditEvent(actor_user_id=user.id, subject_user_id=user.id, strategy_id=99,
                                  action="two_factor_enabled"))
        db.session.commit()
        db.session.delete(user)
        db.session.commit()
        kept = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "two_factor_enabled"))
        assert kept is not None and kept.actor_user_id is None and kept.subject_user_id is None
        assert kept.strategy_id == 99
