"""Admin: a non-admin (or anonymous) visitor gets 404 on every admin route; the kill switch stops another
user's running strategy with one SELL through the engine, refuses STARTs until released, and is audited."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.engine_helpers import broker_orders, orders, run_event, start, started_strategy, trader, wait_status
from tests.helpers import PASSWORD, api_register, api_strategy, browser_login, csrf_token, db_scalar, db_update
from webapp.engine.events import KILL
from webapp.models import AuditEvent, User


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def admin_client(app, email: str = "boss@example.com"):  # type: ignore[no-untyped-def]
    client = app.test_client()
    browser_login(client, email)
    db_update(app, User, db_scalar(app, select(User.id).where(User.email == email)), is_admin=True)
    return client


def admin_routes(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/admin"):
            url = rule.rule.replace("<int:switch_id>", "1").replace("<int:user_id>", "1")
            url = url.replace("<any(disable, enable):action>", "disable")
            routes += [(method, url) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


def test_non_admins_get_404_on_every_admin_route(app, client):
    routes = admin_routes(app)
    assert len(routes) >= 5
    for method, url in routes:
        assert client.open(url, method=method).status_code == 404, (method, url)  # anonymous
    browser_login(client, "trader@example.com")
    token = csrf_token(client, "/strategies")
    for method, url in routes:
        response = client.open(url, method=method, data={"csrf_token": token, "confirmation": "KILL", "reason": "x"})
        assert response.status_code == 404, (method, url)
    assert "Admin" not in client.get("/strategies").get_data(as_text=True)


def test_kill_switch_needs_the_typed_confirmation_and_a_reason(app):
    admin = admin_client(app)
    assert admin.post("/admin/kill", data={"reason": "x", "confirmation": "KILL"}).status_code == 400  # CSRF
    token = csrf_token(admin, "/admin")
    for form in ({"reason": "outage", "confirmation": "kill"}, {"reason": "", "confirmation": "KILL"}):
        admin.post("/admin/kill", data={**form, "csrf_token": token})
        assert "Kill switch not engaged" in admin.get("/admin").get_data(as_text=True)
    assert db_scalar(app, select(AuditEvent.id).where(AuditEvent.action == "kill_switch_engaged")) is None


@pytest.mark.slow
def test_kill_switch_stops_another_users_position_with_one_sell_and_blocks_starts(app, client, engine, redis_conn):
    headers = trader(client, "victim@example.com")
    sid = started_strategy(client, headers, buy_in=1, sell_in=120)
    wait_status(client, headers, sid, "in_position")
    victim_id = db_scalar(app, select(User.id).where(User.email == "victim@example.com"))
    admin = admin_client(app)
    token = csrf_token(admin, "/admin")
    response = admin.post("/admin/kill", data={"user_id": str(victim_id), "reason": "runaway orders",
                                               "confirmation": "KILL", "csrf_token": token})
    assert response.status_code == 303
    killed = wait_status(client, headers, sid, "killed")
    assert killed["position"] == 0 and killed["status_reason"] == "stopped by the admin kill switch"
    assert [(o["event"], o["side"]) for o in orders(client, headers, sid)] == [("BUY", "BUY"), ("KILL", "SELL")]
    assert broker_orders(redis_conn, run_event(KILL, sid).event_id) == 1
    # New STARTs are refused until the switch is released; the victim's page says why.
    later = api_strategy(client, headers, buy_time="23:59:00", sell_time="23:59:30")
    refused = client.post(f"/api/v1/strategy/{later}/start", headers=headers)
    assert refused.status_code == 409 and "halted by the admin: runaway orders" in refused.json["message"]
    audit = db_scalar(app, select(AuditEvent).where(AuditEvent.action == "kill_switch_engaged"))
    assert audit.detail["strategies"] == 1 and audit.detail["in_position"] == 1 and audit.actor_user_id
    page = admin.get("/admin").get_data(as_text=True)
    assert "ENGAGED for user" in page and "runaway orders" in page
    switch_id = audit.detail["switch_id"]
    assert admin.post(f"/admin/kill/{switch_id}/release", data={"csrf_token": token}).status_code == 303
    start(client, headers, later)
    # Another user's trading was never touched.
    other = api_register(client, "bystander@example.com")
    assert client.get("/api/v1/strategies", headers=other).json["strategies"] == []


def test_admin_health_and_user_disable(app):
    admin = admin_client(app)
    user = app.test_client()
    headers = api_register(user, "u2@example.com")
    assert user.get("/api/v1/strategies", headers=headers).status_code == 200  # the token is known to be good
    health = admin.get("/admin/health").json
    assert health["database"] == "ok" and health["redis"] == "ok" and "queues" in health
    token = csrf_token(admin, "/admin")
    uid = db_scalar(app, select(User.id).where(User.email == "u2@example.com"))
    admin.post(f"/admin/users/{uid}/disable", data={"csrf_token": token})
    assert app.test_client().post("/api/v1/auth/login", json={"email": "u2@example.com",
                                                              "password": PASSWORD}).status_code == 401
    assert user.get("/api/v1/strategies", headers=headers).status_code == 401  # refused at once, not after a cache
    assert db_scalar(app, select(AuditEvent.action).where(AuditEvent.action == "user_disabled")) == "user_disabled"
