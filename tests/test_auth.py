"""Registration, login, logout, bearer tokens and the login rate limits, through HTML and JSON."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.helpers import PASSWORD, api_register, csrf_token, db_scalar, db_update
from webapp.models import User


def test_register_logs_in_and_hashes_the_password(app, client):
    token = csrf_token(client, "/register")
    response = client.post("/register", data={"email": " Asha@Example.COM ", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/broker"
    user = db_scalar(app, select(User))
    assert user.email == "asha@example.com"
    assert user.password_hash.startswith("scrypt:") and PASSWORD not in user.password_hash
    assert client.get("/strategies").status_code == 200


def test_register_with_htmx_redirects_by_header(client):
    token = csrf_token(client, "/register")
    response = client.post("/register", data={"email": "hx@example.com", "password": PASSWORD},
                           headers={"HX-Request": "true", "X-CSRFToken": token})
    assert response.status_code == 204 and response.headers["HX-Redirect"] == "/broker"


@pytest.mark.parametrize("email, password, field, message", [
    ("not-an-email", PASSWORD, "email", "valid email"),
    ("", PASSWORD, "email", "valid email"),
    ("a@example.com", "short1", "password", "At least 10 characters"),
    ("a@example.com", "onlyletterslong", "password", "one digit"),
    ("a@example.com", "1234567890123", "password", "one letter"),
    ("a@example.com", "", "password", "At least 10 characters"),
])
def test_register_rejects_bad_input_per_field_and_creates_nothing(app, client, email, password, field, message):
    token = csrf_token(client, "/register")
    response = client.post("/register", data={"email": email, "password": password, "csrf_token": token},
                           headers={"HX-Request": "true"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert f'id="e-{field}"' in html and message in html
    assert db_scalar(app, select(User)) is None
    api = client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert api.status_code == 422 and field in api.json["fields"] and message in api.json["fields"][field]
    assert db_scalar(app, select(User)) is None


def test_email_is_unique_case_insensitively(client):
    api_register(client, "dup@example.com")
    response = client.post("/api/v1/auth/register", json={"email": "DUP@example.com", "password": PASSWORD})
    assert response.status_code == 422 and "already exists" in response.json["fields"]["email"]


def test_form_without_csrf_token_is_refused(app, client):
    response = client.post("/register", data={"email": "x@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert "expired" in response.get_data(as_text=True)
    assert db_scalar(app, select(User)) is None


def test_login_logout_round_trip(client):
    api_register(client, "lo@example.com")
    token = csrf_token(client)
    bad = client.post("/login", data={"email": "lo@example.com", "password": "wrong password 1", "csrf_token": token})
    assert bad.status_code == 401 and "Wrong email or password" in bad.get_data(as_text=True)
    good = client.post("/login", data={"email": "LO@example.com", "password": PASSWORD, "csrf_token": token})
    assert good.status_code == 303 and good.headers["Location"] == "/strategies"
    assert client.get("/strategies").status_code == 200
    assert client.post("/logout", data={"csrf_token": csrf_token(client, "/strategies")}).status_code == 303
    assert client.get("/strategies").status_code == 302


def test_login_never_redirects_off_site(client):
    api_register(client, "nx@example.com")
    token = csrf_token(client)
    response = client.post("/login?next=//evil.example/x",
                           data={"email": "nx@example.com", "password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"] == "/strategies"


def test_api_token_authenticates_and_bad_tokens_do_not(client):
    headers = api_register(client, "tok@example.com")
    assert client.get("/api/v1/strategies", headers=headers).status_code == 200
    for value in ("Bearer nonsense", "Bearer " + headers["Authorization"][7:-2] + "xx", "Basic abc"):
        response = client.get("/api/v1/strategies", headers={"Authorization": value})
        assert response.status_code == 401 and response.json["error"] == "UNAUTHORIZED"
    assert client.get("/api/v1/strategies").status_code == 401


def test_api_token_expires(app, client):
    app.config["API_TOKEN_TTL_SECONDS"] = -1
    headers = api_register(client, "exp@example.com")
    assert client.get("/api/v1/strategies", headers=headers).status_code == 401


def test_disabled_user_cannot_log_in_or_use_a_token(app, client):
    headers = api_register(client, "off@example.com")
    db_update(app, User, db_scalar(app, select(User.id)), disabled=True)
    assert client.get("/api/v1/strategies", headers=headers).status_code == 401
    assert client.post("/api/v1/auth/login", json={"email": "off@example.com", "password": PASSWORD}).status_code == 401


class TestLoginRateLimits:
    @pytest.fixture
    def app_overrides(self) -> dict:
        return {"LOGIN_LIMIT_PER_IP": "8 per minute", "LOGIN_LIMIT_PER_ACCOUNT": "3 per minute"}


    def test_login_is_rate_limited_per_account_with_a_clear_429(self, client):
        api_register(client, "rl@example.com")
        for _ in range(3):
            r = client.post("/api/v1/auth/login", json={"email": "rl@example.com", "password": "wrong password 1"})
            assert r.status_code == 401
        r = client.post("/api/v1/auth/login", json={"email": "rl@example.com", "password": PASSWORD})
        assert r.status_code == 429 and r.json["error"] == "RATE_LIMITED" and "Try again" in r.json["message"]
        assert int(r.headers["Retry-After"]) > 0
        # The HTML form shares the same counter: guessing cannot switch routes to escape it.
        html = client.post("/login", data={"email": "rl@example.com", "password": PASSWORD, "csrf_token": csrf_token(client)})
        assert html.status_code == 429 and "Too many attempts" in html.get_data(as_text=True)
        # Another account from the same address is not locked out yet.
        api_register(client, "other@example.com")
        assert client.post("/api/v1/auth/login", json={"email": "other@example.com", "password": PASSWORD}).status_code == 200


    def test_login_is_rate_limited_per_ip(self, client):
        for i in range(8):
            client.post("/api/v1/auth/login", json={"email": f"u{i}@example.com", "password": "wrong password 1"})
        r = client.post("/api/v1/auth/login", json={"email": "fresh@example.com", "password": "wrong password 1"})
        assert r.status_code == 429
