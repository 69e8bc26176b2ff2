"""Security basics a reviewer checks first: headers, cookie flags, no 500 pages, admin role from the CLI only."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from tests.helpers import PASSWORD, browser_login, db_scalar
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
