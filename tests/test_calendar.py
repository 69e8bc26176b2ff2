"""The trading-day rule (webapp/market_calendar.py) and START's refusals, with an injected clock."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pytest

from tests.engine_helpers import trader
from tests.helpers import api_strategy
from webapp import clock
from webapp.market_calendar import IST, exchange_date, instant, is_trading_day, next_trading_day


def test_weekends_and_holidays_are_not_trading_days():
    assert is_trading_day(date(2026, 11, 25), "nse")  # a Wednesday
    assert not is_trading_day(date(2026, 11, 28), "nse")  # Saturday
    assert not is_trading_day(date(2026, 11, 24), "nse")  # Guru Nanak Jayanti (holiday file)
    assert next_trading_day(date(2026, 11, 27), "nse") == date(2026, 11, 30)  # Fri → Mon
    assert next_trading_day(date(2026, 11, 23), "nse") == date(2026, 11, 25)  # skips the holiday
    assert is_trading_day(date(2026, 11, 28), "always")


def test_ist_instants_and_dates():
    assert instant(date(2026, 11, 25), time(9, 15)) == datetime(2026, 11, 25, 3, 45, tzinfo=timezone.utc)
    assert exchange_date(datetime(2026, 11, 25, 19, 0, tzinfo=timezone.utc)) == date(2026, 11, 26)


@pytest.fixture
def at_ist(monkeypatch):  # type: ignore[no-untyped-def]
    """Move this process's clock to a given IST wall-clock moment."""
    def move(moment: datetime) -> None:
        real = datetime.now(timezone.utc)
        monkeypatch.setattr(clock, "OFFSET", moment.replace(tzinfo=IST).astimezone(timezone.utc) - real)
    return move


def test_start_on_a_saturday_is_refused_with_the_next_trading_day(client, at_ist):
    headers = trader(client, "sat@example.com")
    sid = api_strategy(client, headers, buy_time="09:20", sell_time="15:00")
    at_ist(datetime(2026, 11, 28, 8, 0))
    response = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert response.status_code == 409
    assert response.json["message"] == ("Sat 28 Nov 2026 is not a trading day. "
                                         "START on Mon 30 Nov before 09:20:00 IST.")


def test_start_after_buy_time_names_the_next_chance(client, at_ist):
    headers = trader(client, "late@example.com")
    sid = api_strategy(client, headers, buy_time="09:20", sell_time="15:00")
    at_ist(datetime(2026, 11, 27, 9, 20, 0))  # a Friday, exactly at buy time: too late
    response = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert response.status_code == 409
    assert "Today's buy time 09:20:00 IST has passed. START on Mon 30 Nov before 09:20:00 IST." == response.json["message"]
    at_ist(datetime(2026, 11, 27, 9, 19, 59) - timedelta(seconds=1))
    assert client.post(f"/api/v1/strategy/{sid}/start", headers=headers).status_code == 200


def test_start_needs_a_broker_account(client):
    from tests.helpers import api_register

    headers = api_register(client, "nobroker@example.com")
    sid = api_strategy(client, headers, buy_time="09:20", sell_time="15:00")
    response = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert response.status_code == 409 and "Connect a broker account" in response.json["message"]


def test_start_and_stop_buttons_on_the_page(client, at_ist):
    from tests.helpers import PAPER_CREDENTIALS, browser_login, csrf_token

    browser_login(client, "page@example.com")
    token = csrf_token(client, "/broker")
    client.post("/broker", data={**PAPER_CREDENTIALS, "csrf_token": token})
    client.post("/strategies/new", data={"name": "Btn", "symbol": "INFY", "quantity": "1", "buy_time": "09:20",
                                         "sell_time": "15:00", "stop_loss": "100", "csrf_token": token})
    at_ist(datetime(2026, 11, 27, 9, 0))
    page = client.get("/strategies/1").get_data(as_text=True)
    assert 'id="start-button"' in page and "No orders yet" in page
    client.post("/strategies/1/start", data={"csrf_token": token})
    page = client.get("/strategies/1").get_data(as_text=True)
    assert "Running: BUY at 09:20:00 IST" in page and 'id="stop-button"' in page and 'data-live' in page and 'hx-trigger="live-refresh"' in page
    client.post("/strategies/1/stop", data={"csrf_token": token})
    assert "Stopping." in client.get("/strategies/1").get_data(as_text=True)


def test_start_and_stop_with_the_engine_unreachable_change_nothing(tmp_path, redis_url):
    """Redis down: START and STOP answer 503 ENGINE_UNAVAILABLE and leave the strategy as it was."""
    from jobs.redis_server import free_port
    from tests.conftest import make_app
    from tests.helpers import db_row, db_update
    from webapp.extensions import db
    from webapp.models import Strategy

    up = make_app(f"sqlite:///{tmp_path / 'e.sqlite3'}", redis_url, TRADING_CALENDAR="always")
    with up.app_context():
        db.create_all()
    client = up.test_client()
    headers = trader(client, "down@example.com")
    sid = api_strategy(client, headers, buy_time="23:59:00", sell_time="23:59:30")
    down = make_app(up.config["SQLALCHEMY_DATABASE_URI"], f"redis://127.0.0.1:{free_port()}/0", TRADING_CALENDAR="always")
    dead = down.test_client()
    before = db_row(down, Strategy, sid)
    response = dead.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert response.status_code == 503 and response.json["error"] == "ENGINE_UNAVAILABLE"
    assert db_row(down, Strategy, sid) == before
    db_update(down, Strategy, sid, status="in_position", position=5)
    response = dead.post(f"/api/v1/strategy/{sid}/stop", headers=headers)
    assert response.status_code == 503
    assert db_row(down, Strategy, sid)["status"] == "in_position"


def test_kite_tokens_expire_at_six_ist_the_next_morning():
    from webapp.market_calendar import kite_token_expiry

    six_tomorrow = datetime(2026, 11, 26, 6, 0, tzinfo=IST).astimezone(timezone.utc)
    assert kite_token_expiry(datetime(2026, 11, 25, 9, 0, tzinfo=IST)) == six_tomorrow
    assert kite_token_expiry(datetime(2026, 11, 25, 23, 59, tzinfo=IST)) == six_tomorrow
    # A login before 06:00 lasts only until 06:00 the same morning.
    assert kite_token_expiry(datetime(2026, 11, 26, 5, 0, tzinfo=IST)) == six_tomorrow
