"""Small helpers that go through the real HTTP surface (no shortcuts into the database)."""
from __future__ import annotations

import re
from typing import Any

from webapp.extensions import db

PASSWORD = "correct horse 42"
STRATEGY = {"name": "Morning INFY", "symbol": "INFY", "exchange": "NSE", "product": "MIS", "quantity": 10,
            "buy_time": "09:20", "sell_time": "15:00", "stop_loss": "1400.50"}
PAPER_CREDENTIALS = {"api_key": "paperkey1234", "api_secret": "papersecret99", "access_token": "papertoken77"}


def csrf_token(client, path: str = "/login") -> str:  # type: ignore[no-untyped-def]
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def api_register(client, email: str) -> dict:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.json
    return {"Authorization": f"Bearer {response.json['token']}"}


def api_login(client, email: str) -> dict:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.json
    return {"Authorization": f"Bearer {response.json['token']}"}


def api_strategy(client, headers: dict, **changes: object) -> int:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/strategy/create", json={**STRATEGY, **changes}, headers=headers)
    assert response.status_code == 201, response.json
    return response.json["strategy_id"]


def browser_login(client, email: str) -> None:  # type: ignore[no-untyped-def]
    """Register through the HTML form; the client then holds a logged-in session cookie."""
    token = csrf_token(client, "/register")
    response = client.post("/register", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 303, response.get_data(as_text=True)[:500]


def db_scalar(app, statement) -> Any:  # type: ignore[no-untyped-def]
    """Read the database as another process would: in an app context of its own."""
    with app.app_context():
        value = db.session.scalar(statement)
        if value is not None and hasattr(value, "__table__"):
            db.session.expunge(value)
        return value


def db_update(app, model, key: int, **fields: object) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        row = db.session.get(model, key)
        for name, value in fields.items():
            setattr(row, name, value)
        db.session.commit()


def db_row(app, model, key: int) -> dict:  # type: ignore[no-untyped-def]
    with app.app_context():
        row = db.session.get(model, key)
        return {c.name: getattr(row, c.name) for c in model.__table__.columns}
