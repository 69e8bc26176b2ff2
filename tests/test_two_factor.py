"""Two-factor login (TOTP) and API keys, through the real HTTP surface and a real database.

The server's TOTP clock (webapp.services.two_factor.now) is pinned by the `totp_clock` fixture, so the
tests step through 30-second time-steps without sleeping; codes are computed with pyotp from the secret
the Security page shows, for the same instants."""
from __future__ import annotations

import re

import pyotp
import pytest
from sqlalchemy import func, select

from tests.helpers import PASSWORD, api_register, browser_login, csrf_token, db_scalar, db_update
from webapp import crypto
from webapp.extensions import db
from webapp.models import ApiKey, AuditEvent, KillSwitch, RecoveryCode, User
from webapp.services import two_factor

T0 = 1_800_000_000.0 + 5  # 5 s into a time-step
STEP = 30


@pytest.fixture
def app_overrides() -> dict:
    return {"ADMIN_TWO_FACTOR_REQUIRED": True}


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def advance(self, seconds: float = STEP) -> None:
        self.t += seconds


@pytest.fixture
def totp_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(two_factor, "now", lambda: clock.t)
    return clock


def user_id(app, email: str) -> int:  # type: ignore[no-untyped-def]
    return db_scalar(app, select(User.id).where(User.email == email))


def audit_actions(app, email: str) -> list[str]:  # type: ignore[no-untyped-def]
    with app.app_context():
        uid = db.session.scalar(select(User.id).where(User.email == email))
        return list(db.session.scalars(select(AuditEvent.action).where(AuditEvent.subject_user_id == uid)
                                       .order_by(AuditEvent.id)))


def start_enrolment(client) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Press "Set up" on the Security page; returns (the page with the QR code, the secret it shows)."""
    token = csrf_token(client, "/settings/security")
    assert client.post("/settings/security/two-factor/start", data={"csrf_token": token}).status_code == 303
    page = client.get("/settings/security").get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)
    return page, secret


def enrol(client, clock: Clock) -> tuple[pyotp.TOTP, list[str]]:  # type: ignore[no-untyped-def]
    """Turn two-factor on with the code of the clock's current step; returns the TOTP and the recovery codes."""
    _, secret = start_enrolment(client)
    totp = pyotp.TOTP(secret)
    response = client.post("/settings/security/two-factor/confirm",
                           data={"code": totp.at(clock.t), "csrf_token": csrf_token(client, "/settings/security")})
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    codes = re.findall(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>", response.get_data(as_text=True))
    assert len(codes) == 10
    return totp, codes


def logout(client) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/logout", data={"csrf_token": csrf_token(client, "/settings/security")}).status_code == 303


def password_step(client, email: str):  # type: ignore[no-untyped-def]
    return client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf_token(client)})


def code_step(client, code: str):  # type: ignore[no-untyped-def]
    token = csrf_token(client)  # the session's token, from a page that is always there
    return client.post("/login/two-factor", data={"code": code, "csrf_token": token})


def logged_in(client) -> bool:  # type: ignore[no-untyped-def]
    return client.get("/strategies").status_code == 200


# --- Enrolment


def test_enrolment_draws_the_qr_code_inline_and_needs_a_current_code(app, client, totp_clock):
    browser_login(client, "enrol@example.com")
    page = client.get("/settings/security").get_data(as_text=True)
    assert "Set up two-factor login" in page and "<svg" not in page
    page, secret = start_enrolment(client)
    qr = re.search(r"<svg\b.*?</svg>", page, re.S).group(0)
    assert 'class="totp-qr"' in qr and "<path" in qr
    # Drawn here: no image element, nothing fetched from another host, the secret not in any URL.
    assert "<img" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert "otpauth://" not in page and "chart.googleapis" not in page
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "enrol@example.com"))
        assert not user.totp_enabled
        assert secret.encode() not in user.totp_secret_enc and crypto.decrypt(user.totp_secret_enc) == secret

    totp = pyotp.TOTP(secret)
    token = csrf_token(client, "/settings/security")
    wrong = client.post("/settings/security/two-factor/confirm", data={"code": "000000", "csrf_token": token})
    assert wrong.status_code == 422 and "That code is not right" in wrong.get_data(as_text=True)
    old = client.post("/settings/security/two-factor/confirm",
                      data={"code": totp.at(totp_clock.t - 3 * STEP), "csrf_token": token})
    assert old.status_code == 422 and "not right" in old.get_data(as_text=True)
    assert not db_scalar(app, select(User.totp_enabled).where(User.email == "enrol@example.com"))

    ok = client.post("/settings/security/two-factor/confirm", data={"code": totp.at(totp_clock.t), "csrf_token": token})
    html = ok.get_data(as_text=True)
    assert ok.status_code == 200 and "Two-factor login is on." in html and "shown only\n          this once" in html
    codes = re.findall(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>", html)
    assert len(set(codes)) == 10
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "enrol@example.com"))
        assert user.totp_enabled and user.totp_enabled_at is not None
        hashes = list(db.session.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.user_id == user.id)))
        assert len(hashes) == 10 and len(set(hashes)) == 10
        assert not any(code.replace("-", "") in h or code in h for code in codes for h in hashes)
    # Shown once: the page no longer lists them.
    again = client.get("/settings/security").get_data(as_text=True)
    assert not any(code in again for code in codes) and "Recovery codes left: 10 of 10" in again
    assert audit_actions(app, "enrol@example.com") == ["two_factor_enabled"]


# --- Login


def test_login_asks_for_the_code_before_logging_in_and_refuses_wrong_and_replayed_codes(app, client, totp_clock):
    browser_login(client, "login@example.com")
    totp, _ = enrol(client, totp_clock)
    logout(client)

    first = password_step(client, "login@example.com")
    assert first.status_code == 303 and first.headers["Location"] == "/login/two-factor"
    assert not logged_in(client), "logged in before the second factor"
    assert "Enter your code" in client.get("/login/two-factor").get_data(as_text=True)

    wrong = code_step(client, "123456" if totp.at(totp_clock.t) != "123456" else "654321")
    assert wrong.status_code == 401 and "That code is not right" in wrong.get_data(as_text=True)
    assert not logged_in(client)
    # The enrolment spent this step's code: the same code again is a replay.
    replay = code_step(client, totp.at(totp_clock.t))
    assert replay.status_code == 401 and "already used" in replay.get_data(as_text=True)
    assert not logged_in(client)

    totp_clock.advance()
    ok = code_step(client, totp.at(totp_clock.t))
    assert ok.status_code == 303 and ok.headers["Location"] == "/strategies"
    assert logged_in(client)
    logout(client)

    # The same code, still within its 30 seconds, does not log in twice; nor does the previous step's code,
    # though it is inside the clock-drift window.
    assert password_step(client, "login@example.com").status_code == 303
    same = code_step(client, totp.at(totp_clock.t))
    assert same.status_code == 401 and "already used" in same.get_data(as_text=True)
    earlier = code_step(client, totp.at(totp_clock.t - STEP))
    assert earlier.status_code == 401 and "already used" in earlier.get_data(as_text=True)
    assert not logged_in(client)
    # Clock drift: the next step's code is accepted now (valid_window=1) ...
    drift = code_step(client, totp.at(totp_clock.t + STEP))
    assert drift.status_code == 303 and logged_in(client)


def test_the_second_step_needs_a_fresh_password_step(app, client, totp_clock):
    browser_login(client, "pending@example.com")
    totp, _ = enrol(client, totp_clock)
    logout(client)
    # Without the password step there is no one to log in.
    response = client.get("/login/two-factor")
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    # A pending login expires.
    app.config["TWO_FACTOR_PENDING_SECONDS"] = -1
    assert password_step(client, "pending@example.com").status_code == 303
    totp_clock.advance()
    expired = code_step(client, totp.at(totp_clock.t))
    assert expired.status_code == 303 and expired.headers["Location"] == "/login"
    assert not logged_in(client)


def test_a_recovery_code_logs_in_once(app, client, totp_clock):
    browser_login(client, "recover@example.com")
    _, codes = enrol(client, totp_clock)
    logout(client)
    assert password_step(client, "recover@example.com").status_code == 303
    ok = code_step(client, codes[3].upper().replace("-", " "))  # typed loosely
    assert ok.status_code == 303 and logged_in(client)
    assert audit_actions(app, "recover@example.com") == ["two_factor_enabled", "recovery_code_used"]
    assert "Recovery codes left: 9 of 10" in client.get("/settings/security").get_data(as_text=True)
    logout(client)

    assert password_step(client, "recover@example.com").status_code == 303
    again = code_step(client, codes[3])
    assert again.status_code == 401 and "not right" in again.get_data(as_text=True)
    assert not logged_in(client)
    other = code_step(client, codes[4])
    assert other.status_code == 303 and logged_in(client)
    with app.app_context():
        uid = db.session.scalar(select(User.id).where(User.email == "recover@example.com"))
        used = db.session.scalar(select(func.count(RecoveryCode.id)).where(RecoveryCode.user_id == uid,
                                                                             RecoveryCode.used_at.is_not(None)))
    assert used == 2


class TestSecondStepRateLimit:
    @pytest.fixture
    def app_overrides(self) -> dict:
        return {"ADMIN_TWO_FACTOR_REQUIRED": True, "LOGIN_LIMIT_PER_ACCOUNT": "3 per minute"}

    def test_wrong_codes_are_rate_limited_per_account(self, client, totp_clock):
        browser_login(client, "slow@example.com")
        totp, _ = enrol(client, totp_clock)
        logout(client)
        assert password_step(client, "slow@example.com").status_code == 303
        bad = "000000" if totp.at(totp_clock.t + STEP) != "000000" else "111111"
        statuses = [code_step(client, bad).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        totp_clock.advance()
        assert code_step(client, totp.at(totp_clock.t)).status_code == 429  # even the right code, for now
        assert not logged_in(client)


# --- Disable


def test_turning_two_factor_off_needs_a_code(app, client, totp_clock):
    browser_login(client, "off@example.com")
    totp, codes = enrol(client, totp_clock)
    token = csrf_token(client, "/settings/security")
    missing = client.post("/settings/security/two-factor/disable", data={"csrf_token": token})
    assert missing.status_code == 422 and "not right" in missing.get_data(as_text=True)
    replay = client.post("/settings/security/two-factor/disable", data={"code": totp.at(totp_clock.t),
                                                                         "csrf_token": token})
    assert replay.status_code == 422 and "already used" in replay.get_data(as_text=True)
    assert db_scalar(app, select(User.totp_enabled).where(User.email == "off@example.com"))

    totp_clock.advance()
    off = client.post("/settings/security/two-factor/disable", data={"code": totp.at(totp_clock.t),
                                                                      "csrf_token": token})
    assert off.status_code == 303
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "off@example.com"))
        assert not user.totp_enabled and user.totp_secret_enc is None
        assert db.session.scalar(select(func.count(RecoveryCode.id)).where(RecoveryCode.user_id == user.id)) == 0
    assert audit_actions(app, "off@example.com") == ["two_factor_enabled", "two_factor_disabled"]
    logout(client)
    first = password_step(client, "off@example.com")
    assert first.status_code == 303 and first.headers["Location"] == "/strategies"


def test_a_recovery_code_can_turn_two_factor_off(app, client, totp_clock):
    browser_login(client, "lostphone@example.com")
    _, codes = enrol(client, totp_clock)
    token = csrf_token(client, "/settings/security")
    off = client.post("/settings/security/two-factor/disable", data={"code": codes[0], "csrf_token": token})
    assert off.status_code == 303
    assert not db_scalar(app, select(User.totp_enabled).where(User.email == "lostphone@example.com"))
    assert audit_actions(app, "lostphone@example.com") == ["two_factor_enabled", "recovery_code_used",
                                                           "two_factor_disabled"]


# --- Admins


def test_an_admin_without_two_factor_is_sent_to_enrol_then_reaches_the_kill_switch(app, client, totp_clock):
    browser_login(client, "root@example.com")
    db_update(app, User, user_id(app, "root@example.com"), is_admin=True)
    response = client.get("/admin")
    assert response.status_code == 303 and response.headers["Location"] == "/settings/security#two-factor"
    page = client.get("/settings/security").get_data(as_text=True)
    assert "Admins need two-factor login" in page and "You are an admin" in page
    # Not even a post gets through (and nothing is engaged).
    token = csrf_token(client, "/settings/security")
    kill = client.post("/admin/kill", data={"reason": "test", "confirmation": "KILL", "csrf_token": token})
    assert kill.status_code == 303 and kill.headers["Location"].startswith("/settings/security")
    assert db_scalar(app, select(func.count(KillSwitch.id))) == 0
    assert client.get("/admin/health").status_code == 303

    totp, _ = enrol(client, totp_clock)
    admin_page = client.get("/admin")
    assert admin_page.status_code == 200 and 'action="/admin/kill"' in admin_page.get_data(as_text=True)
    # An admin cannot turn it off while it is required.
    totp_clock.advance()
    refused = client.post("/settings/security/two-factor/disable",
                          data={"code": totp.at(totp_clock.t), "csrf_token": token})
    assert refused.status_code == 422 and "Admins must keep two-factor login on" in refused.get_data(as_text=True)
    assert db_scalar(app, select(User.totp_enabled).where(User.email == "root@example.com"))
    # A trader is not asked to enrol.
    trader = app.test_client()
    browser_login(trader, "trader@example.com")
    assert trader.get("/admin").status_code == 404
    assert "You are an admin" not in trader.get("/settings/security").get_data(as_text=True)


# --- JSON API


def test_json_login_with_two_factor_on_needs_the_code(app, client, totp_clock):
    browser_login(client, "jsonlogin@example.com")
    totp, _ = enrol(client, totp_clock)
    api = app.test_client()
    body = {"email": "jsonlogin@example.com", "password": PASSWORD}
    missing = api.post("/api/v1/auth/login", json=body)
    assert missing.status_code == 401 and missing.json["error"] == "TOTP_REQUIRED"
    assert "totp" in missing.json["message"] and "token" not in missing.json
    wrong = api.post("/api/v1/auth/login", json={**body, "totp": "12345x"})
    assert wrong.status_code == 401 and wrong.json["error"] == "INVALID_TOTP"
    replay = api.post("/api/v1/auth/login", json={**body, "totp": totp.at(totp_clock.t)})
    assert replay.status_code == 401 and "already used" in replay.json["message"]
    totp_clock.advance()
    ok = api.post("/api/v1/auth/login", json={**body, "totp": totp.at(totp_clock.t)})
    assert ok.status_code == 200 and ok.json["token"]
    headers = {"Authorization": f"Bearer {ok.json['token']}"}
    assert api.get("/api/v1/strategies", headers=headers).status_code == 200
    # The wrong password is still the first refusal, code or not.
    bad = api.post("/api/v1/auth/login", json={**body, "password": "wrong password 1", "totp": "000000"})
    assert bad.status_code == 401 and bad.json["error"] == "INVALID_CREDENTIALS"


def test_api_keys_are_created_used_and_revoked_at_once(app, client):
    headers = api_register(client, "keys@example.com")
    created = client.post("/api/v1/api-keys", json={"name": "phone dashboard"}, headers=headers)
    assert created.status_code == 201
    key = created.json["key"]
    assert re.fullmatch(r"ak_[0-9a-f]{12}_[A-Za-z0-9_-]{40,}", key)
    assert created.json["api_key"]["prefix"] == key[:15] and created.json["api_key"]["active"] is True
    with app.app_context():
        row = db.session.scalar(select(ApiKey))
        assert key not in row.key_hash and key.split("_", 2)[2] not in row.key_hash and row.last_used_at is None

    key_headers = {"Authorization": f"Bearer {key}"}
    mine = client.get("/api/v1/strategies", headers=key_headers)
    assert mine.status_code == 200
    listed = client.get("/api/v1/api-keys", headers=key_headers).json["api_keys"]
    assert [k["name"] for k in listed] == ["phone dashboard"] and listed[0]["last_used_at"] is not None
    assert key not in str(listed)
    minted = client.post("/api/v1/api-keys", json={"name": "from a key"}, headers=key_headers)
    assert minted.status_code == 403 and "cannot create API keys" in minted.json["message"]  # no key outlives its own

    # Another tenant cannot see or revoke it; a wrong secret with the right prefix is refused.
    other = api_register(app.test_client(), "other@example.com")
    assert client.get("/api/v1/api-keys", headers=other).json == {"api_keys": []}
    assert client.delete(f"/api/v1/api-keys/{row.id}", headers=other).status_code == 404
    assert client.get("/api/v1/strategies", headers=key_headers).status_code == 200
    forged = {"Authorization": f"Bearer {key[:16]}{'A' * 43}"}
    assert client.get("/api/v1/strategies", headers=forged).status_code == 401

    assert client.delete(f"/api/v1/api-keys/{row.id}", headers=headers).status_code == 204
    revoked = client.get("/api/v1/strategies", headers=key_headers)
    assert revoked.status_code == 401 and revoked.json["error"] == "UNAUTHORIZED"
    assert client.get("/api/v1/api-keys", headers=headers).json["api_keys"][0]["revoked_at"] is not None
    assert audit_actions(app, "keys@example.com") == ["api_key_created", "api_key_revoked"]
    assert client.delete(f"/api/v1/api-keys/{2**63}", headers=headers).status_code == 404


def test_an_api_key_works_for_a_two_factor_user_and_stops_when_the_user_is_disabled(app, client, totp_clock):
    browser_login(client, "scripted@example.com")
    enrol(client, totp_clock)
    token = csrf_token(client, "/settings/security")
    page = client.post("/settings/security/api-keys", data={"name": "cron job", "csrf_token": token})
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "shown only this once" in html
    key = re.search(r'id="new-api-key">(ak_[^<]+)<', html).group(1)
    key_headers = {"Authorization": f"Bearer {key}"}
    api = app.test_client()
    assert api.get("/api/v1/strategies", headers=key_headers).status_code == 200
    # The session-authenticated API works too (with the CSRF header for writes).
    assert client.post("/api/v1/api-keys", json={"name": "x"}).status_code == 400
    assert client.post("/api/v1/api-keys", json={"name": "x"}, headers={"X-CSRFToken": token}).status_code == 201
    listing = client.get("/settings/security").get_data(as_text=True)
    assert key not in listing and "cron job" in listing and key[:15] in listing

    db_update(app, User, user_id(app, "scripted@example.com"), disabled=True)
    assert api.get("/api/v1/strategies", headers=key_headers).status_code == 401
    db_update(app, User, user_id(app, "scripted@example.com"), disabled=False)
    assert api.get("/api/v1/strategies", headers=key_headers).status_code == 200

    key_id = db_scalar(app, select(ApiKey.id).where(ApiKey.name == "cron job"))
    revoke = client.post(f"/settings/security/api-keys/{key_id}/revoke", data={"csrf_token": token})
    assert revoke.status_code == 303
    assert api.get("/api/v1/strategies", headers=key_headers).status_code == 401
    # Someone else's key id from the page: 404.
    intruder = app.test_client()
    browser_login(intruder, "intruder@example.com")
    other_token = csrf_token(intruder, "/settings/security")
    assert intruder.post(f"/settings/security/api-keys/{key_id}/revoke",
                         data={"csrf_token": other_token}).status_code == 404
