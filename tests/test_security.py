"""Security basics a reviewer checks first: headers, cookie flags, no 500 pages, admin role from the CLI only,
sockets only from our own origin, no redirect off-site after login, no 500 on a malformed kill-switch scope."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import simple_websocket
from sqlalchemy import select

from tests.helpers import PASSWORD, browser_login, csrf_token, db_scalar, db_update
from webapp.models import AuditEvent, User

ROOT = Path(__file__).resolve().parent.parent


def test_security_headers_on_pages_and_api(client):
    for path in ("/login", "/api/v1/openapi.json", "/nope"):
        headers = client.get(path).headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_session_cookie_is_httponly_and_samesite(client):
    browser_login(client, "c@example.com")
    cookie = client.get_cookie("session")
    assert cookie.http_only and cookie.same_site == "Lax"


def test_unknown_pages_are_friendly_404s(client):
    page = client.get("/strategies/123456")
    assert page.status_code == 302  # logged out: to the login page first
    response = client.get("/definitely/not/here")
    assert response.status_code == 404 and "Not found" in response.get_data(as_text=True)
    api = client.get("/api/v1/nothing")
    assert api.status_code == 404 and api.json["error"] == "NOT_FOUND"
    assert client.patch("/api/v1/strategies").json["error"] == "METHOD_NOT_ALLOWED"


def test_pages_load_no_third_party_assets(client):
    html = client.get("/login").get_data(as_text=True)
    assert "/static/vendor/htmx/htmx.min.js" in html and "/static/vendor/pico/pico.min.css" in html
    assert "http://" not in html and "https://" not in html
    assert client.get("/static/vendor/htmx/htmx.min.js").status_code == 200


def test_create_admin_cli_grants_the_role_and_audits_it(app, tmp_path):
    database = app.config["SQLALCHEMY_DATABASE_URI"]
    env = {**os.environ, "DATABASE_URL": database, "FLASK_APP": "wsgi", "ADMIN_PASSWORD": PASSWORD,
           "REDIS_URL": app.config["REDIS_URL"]}
    result = subprocess.run([sys.executable, "-m", "flask", "create-admin", "Root@Example.com"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "root@example.com is an admin." in result.stdout
    admin = db_scalar(app, select(User).where(User.email == "root@example.com"))
    assert admin.is_admin and admin.check_password(PASSWORD)
    assert db_scalar(app, select(AuditEvent.action)) == "admin_granted"
    weak = subprocess.run([sys.executable, "-m", "flask", "create-admin", "weak@example.com", "--password", "short"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert weak.returncode != 0 and "At least 10 characters" in weak.stderr


def test_registration_never_makes_an_admin(app, client):
    client.post("/api/v1/auth/register", json={"email": "x@example.com", "password": PASSWORD, "is_admin": True})
    assert db_scalar(app, select(User.is_admin)) is False


FOREIGN_ORIGIN = "https://evil.example"


def _session_cookie(client) -> str:  # type: ignore[no-untyped-def]
    browser_login(client, "socket@example.com")
    return f"session={client.get_cookie('session').value}"


def test_a_socketio_handshake_from_another_site_is_refused_even_with_the_users_cookie(client, live_server):
    """A cross-site page can open a socket to us and the browser adds the user's cookie: only the Origin
    header tells it apart, for both transports."""
    cookie = _session_cookie(client)
    polling = requests.get(f"{live_server}/socket.io/?EIO=4&transport=polling", timeout=10,
                           headers={"Origin": FOREIGN_ORIGIN, "Cookie": cookie})
    assert polling.status_code == 400 and "Not an accepted origin" in polling.text
    with pytest.raises(simple_websocket.ConnectionError) as refused:
        simple_websocket.Client.connect(f"{live_server.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket",
                                        headers={"Origin": FOREIGN_ORIGIN, "Cookie": cookie})
    assert refused.value.status_code == 400


def test_a_same_origin_socketio_handshake_is_accepted_and_joins(client, live_server):
    cookie = _session_cookie(client)
    base = f"{live_server}/socket.io/?EIO=4&transport=polling"
    headers = {"Origin": live_server, "Cookie": cookie}
    opened = requests.get(base, headers=headers, timeout=10)
    assert opened.status_code == 200 and opened.text.startswith("0{")
    sid = json.loads(opened.text[1:])["sid"]
    assert requests.post(f"{base}&sid={sid}", data="40", headers=headers, timeout=10).text == "OK"
    answer = requests.get(f"{base}&sid={sid}", headers=headers, timeout=10).text
    assert answer.startswith("40{")  # connected: the login session was accepted ("44" would be a refusal)
    # The websocket transport the dashboard uses: this client sends no port in Host, so its origin has none.
    port_less = live_server.rsplit(":", 1)[0]
    ws = simple_websocket.Client.connect(f"{live_server.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket",
                                         headers={"Origin": port_less, "Cookie": cookie})
    try:
        assert ws.receive(timeout=10).startswith("0{")
        ws.send("40")
        assert ws.receive(timeout=10).startswith("40{")
    finally:
        ws.close()


@pytest.mark.parametrize("target", [
    "/%09/evil.example",  # a tab, which browsers drop: //evil.example
    "/%0a/evil.example",  # a newline, dropped too
    "/%0d%0a/evil.example",
    "//evil.example",
    "https://evil.example",
    "/%5Cevil.example",  # /\evil.example: a backslash is a slash to browsers
    "/%5C%5Cevil.example",
    "%5C%5Cevil.example",
    "/strategies%09",  # any control character, even where it would be harmless
])
def test_login_never_redirects_off_site(app, target: str) -> None:
    """The HTMX login follows HX-Redirect; each of these must land on the dashboard instead."""
    browser_login(app.test_client(), "next@example.com")
    client = app.test_client()
    token = csrf_token(client, "/login")
    response = client.post(f"/login?next={target}", headers={"HX-Request": "true"},
                           data={"email": "next@example.com", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 204 and response.headers["HX-Redirect"] == "/strategies"


def test_login_keeps_a_same_site_next(app) -> None:
    browser_login(app.test_client(), "next@example.com")
    client = app.test_client()
    token = csrf_token(client, "/login")
    form = {"email": "next@example.com", "password": PASSWORD, "csrf_token": token}
    response = client.post("/login?next=/strategies/new%3Fa%3D1", headers={"HX-Request": "true"}, data=form)
    assert response.headers["HX-Redirect"] == "/strategies/new?a=1"


@pytest.mark.parametrize("user_id", ["²", "٣", "1²", "-1", "1.0", "abc", "99999999999999999999"])
def test_kill_switch_with_a_scope_that_is_no_user_number_answers_400(app, user_id: str) -> None:
    admin = app.test_client()
    browser_login(admin, "root@example.com")
    db_update(app, User, db_scalar(app, select(User.id).where(User.email == "root@example.com")), is_admin=True)
    token = csrf_token(admin, "/admin")
    response = admin.post("/admin/kill", data={"user_id": user_id, "reason": "test", "confirmation": "KILL",
                                               "csrf_token": token})
    assert response.status_code == 400
    assert "scope must be a user number, or empty for everyone" in response.get_data(as_text=True)
    assert db_scalar(app, select(AuditEvent.id).where(AuditEvent.action == "kill_switch_engaged")) is None
