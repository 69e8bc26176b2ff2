"""Admin: a non-admin (or anonymous) visitor gets 404 on every admin route; the kill switch stops another
user's running strategy with one SELL through the engine, refuses STARTs until released, and is audited."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

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


def kill(admin, token: str, reason: str, user_id: int | str = ""):  # type: ignore[no-untyped-def]
    return admin.post("/admin/kill", data={"user_id": str(user_id), "reason": reason, "confirmation": "KILL",
                                           "csrf_token": token})


def active_switches(app) -> list:  # type: ignore[no-untyped-def]
    from webapp.models import active_kill_switches
    with app.app_context():
        return [(s.user_id, s.reason) for s in active_kill_switches()]


def test_kill_switch_reason_is_limited_to_200_characters_and_kept_on_one_line(app):
    admin = admin_client(app)
    token = csrf_token(admin, "/admin")
    assert 'maxlength="200"' in admin.get("/admin").get_data(as_text=True)
    kill(admin, token, "x" * 201)
    assert "Keep the reason to 200 characters" in admin.get("/admin").get_data(as_text=True)
    assert active_switches(app) == []
    kill(admin, token, "  exchange\n\toutage   " + "y" * 150 + "  ")
    assert active_switches(app) == [(None, "exchange outage " + "y" * 150)]


def test_global_kill_switches_do_not_stack(app):
    """A second global switch is refused (not merged): the first already halts everyone, and its reason stays
    what traders read and the audit recorded. A switch for one user may still be engaged beside it."""
    admin = admin_client(app)
    token = csrf_token(admin, "/admin")
    assert kill(admin, token, "exchange outage").status_code == 303
    kill(admin, token, "second thoughts")
    page = admin.get("/admin").get_data(as_text=True)
    assert "Kill switch not engaged: A global kill switch is already engaged" in page
    assert "Release it first" in page
    victim = app.test_client()
    browser_login(victim, "one@example.com")
    victim_id = db_scalar(app, select(User.id).where(User.email == "one@example.com"))
    kill(admin, token, "runaway orders", victim_id)
    kill(admin, token, "again", victim_id)  # the same user's switch does not stack either
    assert active_switches(app) == [(None, "exchange outage"), (victim_id, "runaway orders")]
    assert db_scalar(app, select(func.count(AuditEvent.id)).where(AuditEvent.action == "kill_switch_engaged")) == 2


def test_traders_see_a_banner_while_a_switch_covers_them_escaped(app):
    admin = admin_client(app)
    token = csrf_token(admin, "/admin")
    held, bystander = app.test_client(), app.test_client()
    browser_login(held, "held@example.com")
    browser_login(bystander, "free@example.com")
    held_id = db_scalar(app, select(User.id).where(User.email == "held@example.com"))
    assert "kill-switch-banner" not in held.get("/strategies").get_data(as_text=True)
    kill(admin, token, "  <script>alert(1)</script> broker  incident  ", held_id)
    for path in ("/strategies", "/broker", "/settings/risk"):
        html = held.get(path).get_data(as_text=True)
        assert "Trading is halted by the admin:" in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt; broker incident</span>." in html, path
        assert "<script>alert(1)" not in html
    assert "kill-switch-banner" not in bystander.get("/strategies").get_data(as_text=True)  # not theirs
    switch_id = db_scalar(app, select(AuditEvent).where(AuditEvent.action == "kill_switch_engaged")).detail["switch_id"]
    kill(admin, token, "global halt.")
    assert "Trading is halted by the admin:" in bystander.get("/strategies").get_data(as_text=True)
    assert "global halt</span>." in bystander.get("/strategies").get_data(as_text=True)  # no double full stop
    admin.post(f"/admin/kill/{switch_id}/release", data={"csrf_token": token})
    global_id = db_scalar(app, select(AuditEvent).where(AuditEvent.action == "kill_switch_engaged")
                          .order_by(AuditEvent.id.desc())).detail["switch_id"]
    admin.post(f"/admin/kill/{global_id}/release", data={"csrf_token": token})
    assert "kill-switch-banner" not in held.get("/strategies").get_data(as_text=True)


def test_audit_list_reads_as_words_with_ist_times(app):
    from datetime import datetime, timezone

    from webapp.market_calendar import IST
    from webapp.models import KillSwitch

    admin = admin_client(app)
    token = csrf_token(admin, "/admin")
    other = app.test_client()
    browser_login(other, "sam@example.com")
    uid = db_scalar(app, select(User.id).where(User.email == "sam@example.com"))
    kill(admin, token, "exchange outage")
    page = admin.get("/admin").get_data(as_text=True)
    assert "kill switch engaged (global): reason “exchange outage” — 0 strategies stopped, 0 positions squared off" \
        in page
    admin.post(f"/admin/users/{uid}/disable", data={"csrf_token": token})
    page = admin.get("/admin").get_data(as_text=True)
    assert "user sam@example.com (#" in page and "disabled" in page and "by boss@example.com" in page
    assert "{'" not in page and "{&#39;" not in page  # no Python dicts
    assert "UTC" not in page
    engaged_at = db_scalar(app, select(KillSwitch.engaged_at))
    assert engaged_at.astimezone(IST).strftime("since %d %b %Y %H:%M:%S IST") in page
    assert datetime.now(timezone.utc).astimezone(IST).strftime("%d %b %Y") in page
    # Enabling needs no confirmation; disabling asks first.
    browser_login(app.test_client(), "pat@example.com")
    page = admin.get("/admin").get_data(as_text=True)
    assert 'hx-confirm="Disable pat@example.com?' in page


def test_audit_text_of_every_known_action_has_no_dicts():
    from webapp.admin import audit_text

    emails = {1: "a@example.com", 2: "b@example.com"}
    events = [
        ("kill_switch_engaged", 2, {"scope": "user", "reason": "r", "strategies": 3, "in_position": 2, "switch_id": 1}),
        ("kill_switch_released", None, {"switch_id": 1, "reason": "r"}),
        ("daily_loss_limit_hit", 2, {"trading_day": "2026-11-25", "pnl": "-1234.5", "daily_loss_limit": "1000",
                                     "open_positions": 1}),
        ("risk_limits_changed", 2, {"daily_loss_limit": {"from": None, "to": "500"}}),
        ("strategy_failed", 2, {"reason": "broker down", "position": 10, "position_unknown": True}),
        ("something_new", 2, {"a_b": {"c": 1}, "d": [1, 2]}),
    ]
    lines = [audit_text(AuditEvent(action=a, subject_user_id=s, strategy_id=7, detail=d), emails) for a, s, d in events]
    assert lines[0] == ("kill switch engaged (for b@example.com (#2)): reason “r” — 3 strategies stopped, "
                        "2 positions squared off")
    assert lines[1] == "kill switch released (global): it was engaged for “r”"
    assert "−₹1,234.50" in lines[2] and "₹1,000.00" in lines[2]
    assert lines[3] == "risk limits of b@example.com (#2) changed: daily loss limit — → 500"
    assert "position unknown" in lines[4]
    assert lines[5] == "something new (b@example.com (#2)): a b c 1, d 1, 2"
    assert all("{" not in line for line in lines)
