"""Broker credentials: validated through the Broker boundary, encrypted at rest, never shown again."""
from __future__ import annotations

from cryptography.fernet import Fernet
from sqlalchemy import select, text

from tests.helpers import PAPER_CREDENTIALS, api_register, browser_login, csrf_token, db_scalar
from webapp.extensions import db
from webapp.models import BrokerAccount


def test_connect_stores_secrets_encrypted_and_shows_only_last4(app, client):
    headers = api_register(client, "b@example.com")
    response = client.post("/api/v1/broker/connect", json=PAPER_CREDENTIALS, headers=headers)
    assert response.status_code == 200
    assert response.json["account"]["api_key_last4"] == "1234"
    assert response.json["account"]["validated_at"]
    with app.app_context():
        raw = db.session.execute(text("SELECT api_key_enc, api_secret_enc, access_token_enc FROM broker_accounts")).one()
    fernet = Fernet(app.config["ALGO_FERNET_KEY"].encode())
    for stored, plain in zip(raw, PAPER_CREDENTIALS.values()):
        assert plain.encode() not in bytes(stored)
        assert fernet.decrypt(bytes(stored)).decode() == plain
    body = client.get("/api/v1/broker", headers=headers).get_data(as_text=True)
    for secret in PAPER_CREDENTIALS.values():
        assert secret not in body


def test_broker_page_never_renders_secrets_back(client):
    browser_login(client, "page@example.com")
    token = csrf_token(client, "/broker")
    response = client.post("/broker", data={**PAPER_CREDENTIALS, "csrf_token": token})
    assert response.status_code == 303
    html = client.get("/broker").get_data(as_text=True)
    assert "…1234" in html
    for secret in PAPER_CREDENTIALS.values():
        assert secret not in html


def test_invalid_credentials_give_broker_auth_failed_and_store_nothing(app, client):
    headers = api_register(client, "bad@example.com")
    response = client.post("/api/v1/broker/connect", headers=headers,
                           json={"api_key": "x!", "api_secret": "short", "access_token": "tok en with spaces"})
    assert response.status_code == 400 and response.json["error"] == "BROKER_AUTH_FAILED"
    assert "api_key" in response.json["message"]
    assert db_scalar(app, select(BrokerAccount)) is None


def test_invalid_credentials_on_the_page(app, client):
    browser_login(client, "badpage@example.com")
    token = csrf_token(client, "/broker")
    response = client.post("/broker", data={"api_key": "x!", "api_secret": "a", "access_token": "b", "csrf_token": token},
                           headers={"HX-Request": "true"})
    assert response.status_code == 422
    assert "BROKER_AUTH_FAILED" in response.get_data(as_text=True)
    assert db_scalar(app, select(BrokerAccount)) is None


def test_missing_fields_are_reported_per_field(client):
    headers = api_register(client, "miss@example.com")
    response = client.post("/api/v1/broker/connect", json={"api_key": "abcdef12"}, headers=headers)
    assert response.status_code == 422
    assert set(response.json["fields"]) == {"api_secret", "access_token"}


def test_reconnect_replaces_the_single_account(app, client):
    headers = api_register(client, "re@example.com")
    client.post("/api/v1/broker/connect", json=PAPER_CREDENTIALS, headers=headers)
    client.post("/api/v1/broker/connect", json={**PAPER_CREDENTIALS, "api_key": "newkey9876"}, headers=headers)
    with app.app_context():
        accounts = db.session.scalars(select(BrokerAccount)).all()
    assert len(accounts) == 1 and accounts[0].api_key_last4 == "9876"
