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
    html = response.get_data(as_text=True)
    assert "BROKER_AUTH_FAILED" not in html  # the code is for the JSON API; people get words
    assert "The broker did not accept these credentials." in html and "Nothing was saved" in html
    assert "API key must be 6–64 letters or digits" in html and "api_key must" not in html
    assert db_scalar(app, select(BrokerAccount)) is None


def test_an_error_keeps_the_api_key_never_the_secrets(app, client):
    """After a refusal the API key is typed back (it is no secret: the page shows its last 4 anyway); the API
    secret and access token are never sent back, not even masked."""
    browser_login(client, "keep@example.com")
    token = csrf_token(client, "/broker")
    typed = {"api_key": "kiteKey<9>", "api_secret": "Secret!!value77", "access_token": "tok en value 88"}
    response = client.post("/broker", data={**typed, "csrf_token": token}, headers={"HX-Request": "true"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'name="api_key" type="text" value="kiteKey&lt;9&gt;"' in html
    assert typed["api_secret"] not in html and "Secret!!" not in html and "tok en value" not in html
    assert 'name="api_secret" type="password" value=""' in html
    assert 'aria-invalid="true" aria-describedby="e-api_key"' in html
    # A missing field keeps the key too, and says what is missing.
    response = client.post("/broker", data={"api_key": "abcdef12", "api_secret": "", "access_token": "",
                                            "csrf_token": token})
    html = response.get_data(as_text=True)
    assert response.status_code == 422 and 'value="abcdef12"' in html and "Nothing was saved" in html
    # The form says what well-formed credentials look like.
    assert "Kite developer console" in html and "Letters and digits" in html


def test_broker_page_times_are_ist(app, client):
    from webapp.market_calendar import IST

    browser_login(client, "ist@example.com")
    token = csrf_token(client, "/broker")
    assert client.post("/broker", data={**PAPER_CREDENTIALS, "csrf_token": token}).status_code == 303
    html = client.get("/broker").get_data(as_text=True)
    validated = db_scalar(app, select(BrokerAccount.validated_at))
    assert validated.astimezone(IST).strftime("validated %d %b %Y %H:%M:%S IST") in html
    assert "UTC" not in html


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
