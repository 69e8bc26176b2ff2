"""Strategy create / list / view / edit / delete, and every field's bad values, through HTML and JSON."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.helpers import STRATEGY, api_register, api_strategy, browser_login, csrf_token, db_row, db_scalar, db_update
from webapp.models import Strategy
from webapp.state_machine import Status


def count(app) -> int:  # type: ignore[no-untyped-def]
    return db_scalar(app, select(func.count(Strategy.id)))


def test_create_list_view_edit_delete_through_the_api(app, client):
    headers = api_register(client, "s@example.com")
    sid = api_strategy(client, headers, symbol="infy")
    listed = client.get("/api/v1/strategies", headers=headers).json["strategies"]
    assert [s["id"] for s in listed] == [sid]
    one = client.get(f"/api/v1/strategy/{sid}", headers=headers).json["strategy"]
    assert one["symbol"] == "INFY" and one["buy_time"] == "09:20:00" and one["stop_loss"] == "1400.50"
    assert one["status"] == "created" and one["quantity"] == 10
    edited = client.put(f"/api/v1/strategy/{sid}", json={"quantity": 25, "sell_time": "15:10:30"}, headers=headers)
    assert edited.status_code == 200
    assert edited.json["strategy"]["quantity"] == 25 and edited.json["strategy"]["sell_time"] == "15:10:30"
    assert edited.json["strategy"]["name"] == STRATEGY["name"]
    assert client.delete(f"/api/v1/strategy/{sid}", headers=headers).status_code == 204
    assert count(app) == 0


def test_create_and_edit_through_the_html_forms(app, client):
    browser_login(client, "h@example.com")
    token = csrf_token(client, "/strategies/new")
    response = client.post("/strategies/new", data={**STRATEGY, "csrf_token": token})
    assert response.status_code == 303
    strategy = db_scalar(app, select(Strategy))
    assert response.headers["Location"] == f"/strategies/{strategy.id}"
    page = client.get("/strategies").get_data(as_text=True)
    assert STRATEGY["name"] in page and "NSE:INFY" in page
    response = client.post(f"/strategies/{strategy.id}/edit",
                           data={**STRATEGY, "stop_loss": "1390", "csrf_token": token})
    assert response.status_code == 303
    assert str(db_row(app, Strategy, strategy.id)["stop_loss"]) == "1390.00"
    assert client.post(f"/strategies/{strategy.id}/delete", data={"csrf_token": token}).status_code == 303
    assert count(app) == 0


BAD_VALUES = [
    ("name", "", "Required"),
    ("name", "x" * 81, "At most 80"),
    ("symbol", "", "Required"),
    ("symbol", "NOTASTOCK", "not a known NSE instrument"),
    ("exchange", "NYSE", "Must be one of"),
    ("product", "NRML", "MIS"),
    ("quantity", "0", "between 1 and"),
    ("quantity", "-5", "whole number"),
    ("quantity", "2.5", "whole number"),
    ("quantity", "abc", "whole number"),
    ("quantity", "100001", "between 1 and"),
    ("buy_time", "9am", "HH:MM"),
    ("buy_time", "24:00", "HH:MM"),
    ("buy_time", "08:00", "market hours"),
    ("sell_time", "15:45", "market hours"),
    ("sell_time", "09:20", "after the buy time"),
    ("sell_time", "09:10", "market hours"),
    ("stop_loss", "", "price in rupees"),
    ("stop_loss", "0", "greater than 0"),
    ("stop_loss", "-10", "greater than 0"),
    ("stop_loss", "12.345", "2 decimal"),
    ("stop_loss", "NaN", "greater than 0"),
    ("stop_loss", "1e12", "at most"),
]


@pytest.mark.parametrize("field, value, message", BAD_VALUES)
def test_each_bad_field_value_is_explained_on_the_form_and_changes_nothing(app, client, field, value, message):
    browser_login(client, "f@example.com")
    token = csrf_token(client, "/strategies/new")
    response = client.post("/strategies/new", data={**STRATEGY, field: value, "csrf_token": token},
                           headers={"HX-Request": "true"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert f'id="e-{field}"' in html or 'class="field-error"' in html
    assert message in html
    assert count(app) == 0


@pytest.mark.parametrize("field, value, message", BAD_VALUES + [
    ("quantity", True, "whole number"), ("quantity", 1.5, "whole number"), ("stop_loss", [1], "price in rupees"),
    ("stop_loss", True, "price in rupees"), ("buy_time", 920, "HH:MM"), ("name", None, "Required"),
])
def test_each_bad_field_value_is_explained_in_json_and_changes_nothing(app, client, field, value, message):
    headers = api_register(client, "j@example.com")
    response = client.post("/api/v1/strategy/create", json={**STRATEGY, field: value}, headers=headers)
    assert response.status_code == 422 and response.json["error"] == "VALIDATION_FAILED"
    assert message in response.json["fields"][field]
    assert count(app) == 0


def test_bad_edit_changes_nothing(app, client):
    headers = api_register(client, "e@example.com")
    sid = api_strategy(client, headers)
    response = client.put(f"/api/v1/strategy/{sid}", json={"quantity": 0, "name": "renamed"}, headers=headers)
    assert response.status_code == 422 and "quantity" in response.json["fields"]
    strategy = client.get(f"/api/v1/strategy/{sid}", headers=headers).json["strategy"]
    assert strategy["quantity"] == 10 and strategy["name"] == STRATEGY["name"]


def test_non_object_json_bodies_are_422_not_500(app, client):
    headers = api_register(client, "n@example.com")
    for body in ("[]", "null", "\"x\"", "{not json", ""):
        response = client.post("/api/v1/strategy/create", data=body, headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == 422, body


@pytest.mark.parametrize("status", [Status.WAITING_ENTRY, Status.IN_POSITION])
def test_running_strategy_cannot_be_edited_or_deleted(app, client, status):
    headers = api_register(client, "r@example.com")
    sid = api_strategy(client, headers)
    db_update(app, Strategy, sid, status=status.value)
    assert client.put(f"/api/v1/strategy/{sid}", json={"quantity": 5}, headers=headers).status_code == 409
    assert client.delete(f"/api/v1/strategy/{sid}", headers=headers).status_code == 409
    assert db_row(app, Strategy, sid)["quantity"] == 10 and count(app) == 1


def test_failed_strategy_still_holding_a_position_cannot_be_deleted(app, client):
    headers = api_register(client, "p@example.com")
    sid = api_strategy(client, headers)
    db_update(app, Strategy, sid, status=Status.FAILED.value, position=10)
    response = client.delete(f"/api/v1/strategy/{sid}", headers=headers)
    assert response.status_code == 409 and "position" in response.json["message"]


class TestAlwaysCalendar:
    @pytest.fixture
    def app_overrides(self) -> dict:
        return {"TRADING_CALENDAR": "always"}

    def test_any_time_of_day_is_accepted(self, client):
        headers = api_register(client, "al@example.com")
        api_strategy(client, headers, buy_time="20:00", sell_time="20:05")


def test_dashboard_cards_show_pnl_controls_and_a_stale_feed_banner(app, client, redis_conn):
    from webapp import keys
    from webapp.models import Strategy

    browser_login(client, "cards@example.com")
    token = csrf_token(client, "/strategies/new")
    client.post("/strategies/new", data={**STRATEGY, "csrf_token": token})
    page = client.get("/strategies").get_data(as_text=True)
    assert "START" in page and 'id="feed-stale"' not in page
    sid = db_scalar(app, select(Strategy.id))
    db_update(app, Strategy, sid, status="in_position", position=10)
    redis_conn.hset(keys.FEED_STALE, "NSE:INFY", "2026-11-25T04:00:00+00:00")
    page = client.get("/strategies/cards").get_data(as_text=True)
    assert 'id="feed-stale"' in page and "NSE:INFY" in page
    assert "STOP will square off 10 INFY at market now" in page and "10/10" in page
