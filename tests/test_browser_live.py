"""The dashboard lives: pushed over Socket.IO (real worker and scheduler processes emitting through Redis),
polling every 5 s when websockets are blocked, never another user's updates. Debian's chromium."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.engine_helpers import csv_feed, seconds_ahead
from tests.helpers import PAPER_CREDENTIALS, PASSWORD, STRATEGY, api_login
from webapp.money import inr

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def sign_up(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/register")
    page.fill("#f-email", email)
    page.fill("#f-password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base}/broker")
    for field, value in PAPER_CREDENTIALS.items():
        page.fill(f"#f-{field}", value)
    page.click("#broker-form button[type=submit]")
    expect(page).to_have_url(f"{base}/strategies")


def create_and_start(page: Page, base: str, name: str, buy_in: float) -> None:
    page.goto(f"{base}/strategies/new")
    values = {**STRATEGY, "name": name, "buy_time": seconds_ahead(buy_in), "sell_time": seconds_ahead(600)}
    for field in ("name", "symbol", "quantity", "buy_time", "sell_time", "stop_loss"):
        page.fill(f"#f-{field}", str(values[field]))
    page.click("#strategy-form button[type=submit]")
    expect(page.locator("#start-button")).to_be_visible()
    page.click("#start-button")
    expect(page.locator("#status")).to_have_text("Waiting to enter")


def test_a_buy_updates_the_open_page_through_the_socket(page, live_server, engine, artifacts):
    engine.env = {**engine.env, "FEED_RATE": "5"}
    engine.start("listener", "jobs.listener")  # the simulated feed: ticks for the chart
    page.set_viewport_size({"width": 1280, "height": 800})
    sign_up(page, live_server, "live@example.com")
    create_and_start(page, live_server, "Live INFY", buy_in=10)
    expect(page.locator(".flash-success")).to_contain_text("Running: BUY at")
    expect(page.locator("#live-indicator")).to_have_text("live", timeout=10_000)
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#status")).to_have_text("In position", timeout=15_000)
    expect(page.locator(".flash-success")).to_have_count(0)  # "Running: BUY at …" described START's moment
    expect(page.locator("#order-log")).to_contain_text("COMPLETE")
    assert page.evaluate("window.notReloaded === true")  # updated in place
    assert page.evaluate("window.liveEvents.some(e => e.status === 'in_position')")  # and by the push
    chart = page.locator("#price-chart")
    expect(chart).to_have_attribute("data-markers", "1", timeout=10_000)  # the entry, drawn on the chart
    expect(chart).not_to_have_attribute("data-points", "0", timeout=10_000)
    page.screenshot(path=str(artifacts / "live-strategy-1280x800.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(artifacts / "live-strategy-390x844.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.goto(f"{live_server}/strategies")
    page.screenshot(path=str(artifacts / "dashboard-390x844.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(artifacts / "dashboard-1280x800.png"), full_page=True)


def test_with_websockets_blocked_the_page_polls_and_still_updates(page, live_server, engine):
    page.route_web_socket(re.compile(r"/socket\.io/"), lambda ws: ws.close())  # every websocket refused
    sign_up(page, live_server, "poll@example.com")
    create_and_start(page, live_server, "Polled INFY", buy_in=10)
    expect(page.locator("#live-indicator")).to_have_text("polling", timeout=10_000)
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#status")).to_have_text("In position", timeout=15_000)
    assert page.evaluate("window.notReloaded === true")
    assert page.evaluate("window.liveEvents.length") == 0  # nothing came over a socket
    expect(page.locator("#live-indicator")).to_have_text("polling")


def rising_feed(engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The listener on INFY ticks that step up 0.50 every 3 s: each price lasts long enough to be compared."""
    rows = [(3.0 * n, "INFY", 1520.0 + 0.5 * n) for n in range(40)]
    engine.env = {**engine.env, "FEED": csv_feed(tmp_path, "rising", rows)}
    engine.start("listener", "jobs.listener")


def shown_as_the_api_says(page: Page, client, headers: dict, sid: int) -> None:  # type: ignore[no-untyped-def]
    """The page's last price and P&L (panel and run history) are the status API's within a second (the listener pushes each second)."""
    said = client.get(f"/api/v1/strategy/status/{sid}", headers=headers).json
    expect(page.locator("#last-price")).to_have_text(inr(said["last_price"]), timeout=1_500)
    expect(page.locator("#pnl")).to_contain_text(inr(said["pnl"]), timeout=1_500)
    # The run history's open run is marked by the same pushes, not only at the next state change.
    expect(page.locator("#unrealised-pnl")).to_contain_text(inr(said["pnl"]), timeout=1_500)
    expect(page.locator("#run-history-table tr.run-current")).to_contain_text(
        f"unrealised at {inr(said['last_price'])}", timeout=1_500)


def test_prices_and_pnl_tick_on_the_open_page_and_match_the_status_api(page, live_server, engine, client,
                                                                        tmp_path):
    rising_feed(engine, tmp_path)
    sign_up(page, live_server, "ticks@example.com")
    create_and_start(page, live_server, "Ticking INFY", buy_in=10)
    headers = api_login(client, "ticks@example.com")
    sid = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#status")).to_have_text("In position", timeout=15_000)
    page.evaluate("window.notReloaded = true")
    first = page.locator("#last-price").inner_text()
    expect(page.locator("#last-price")).not_to_have_text(first, timeout=8_000)  # a new tick, no state change
    shown_as_the_api_says(page, client, headers, sid)
    expect(page.locator("#last-price")).not_to_have_text(page.locator("#last-price").inner_text(), timeout=8_000)
    shown_as_the_api_says(page, client, headers, sid)
    assert page.evaluate("window.notReloaded === true") and page.evaluate("window.livePrices") >= 2
    points = int(page.locator("#price-chart").get_attribute("data-points"))
    expect(page.locator("#price-chart")).not_to_have_attribute("data-points", str(points), timeout=5_000)  # grows


def test_with_websockets_blocked_prices_still_change_by_polling(page, live_server, engine, tmp_path):
    page.route_web_socket(re.compile(r"/socket\.io/"), lambda ws: ws.close())
    rising_feed(engine, tmp_path)
    sign_up(page, live_server, "ticks-polled@example.com")
    create_and_start(page, live_server, "Polled ticks", buy_in=10)
    expect(page.locator("#status")).to_have_text("In position", timeout=15_000)
    page.evaluate("window.notReloaded = true")
    first = page.locator("#last-price").inner_text()
    expect(page.locator("#last-price")).not_to_have_text(first, timeout=12_000)  # the 5 s poll
    assert page.evaluate("window.notReloaded === true") and page.evaluate("window.livePrices") is None


def test_a_user_never_receives_another_users_updates(browser, live_server, engine):
    a_context, b_context = browser.new_context(), browser.new_context()
    a, b = a_context.new_page(), b_context.new_page()
    sign_up(a, live_server, "a@example.com")
    sign_up(b, live_server, "b@example.com")
    create_and_start(b, live_server, "B's INFY", buy_in=10)
    a.goto(f"{live_server}/strategies")
    expect(a.locator("#live-indicator")).to_have_text("live", timeout=10_000)
    expect(b.locator("#live-indicator")).to_have_text("live", timeout=10_000)
    expect(b.locator("#status")).to_have_text("In position", timeout=15_000)
    assert b.evaluate("window.liveEvents.length") >= 1
    assert a.evaluate("window.liveEvents.length") == 0
    a_context.close()
    b_context.close()


def test_admin_kill_switch_in_the_browser(browser, live_server, engine, app, artifacts):
    from sqlalchemy import select

    from tests.helpers import db_scalar, db_update
    from webapp.models import User

    trader_context, admin_context = browser.new_context(), browser.new_context(viewport={"width": 1280, "height": 800})
    trader, admin = trader_context.new_page(), admin_context.new_page()
    sign_up(trader, live_server, "held@example.com")
    create_and_start(trader, live_server, "Held INFY", buy_in=10)
    expect(trader.locator("#status")).to_have_text("In position", timeout=15_000)
    sign_up(admin, live_server, "root@example.com")
    db_update(app, User, db_scalar(app, select(User.id).where(User.email == "root@example.com")), is_admin=True)
    admin.goto(f"{live_server}/admin")
    admin.select_option("#kill-scope", label="held@example.com (#1)")
    admin.fill("#kill-reason", "broker incident")
    admin.fill("#kill-confirmation", "KILL")
    admin.click("#kill-button")
    expect(admin.locator("#kill-switch")).to_contain_text("ENGAGED for user 1")
    expect(trader.locator("#status")).to_have_text("Halted by the admin", timeout=15_000)  # pushed to the trader's page
    expect(trader.locator("#order-log")).to_contain_text("KILL")
    admin.screenshot(path=str(artifacts / "admin-1280x800.png"), full_page=True)
    admin.set_viewport_size({"width": 390, "height": 844})
    admin.screenshot(path=str(artifacts / "admin-390x844.png"), full_page=True)
    assert admin.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    trader.click("#start-button")
    expect(trader.locator(".flash-error")).to_contain_text("halted by the admin: broker incident")
    trader_context.close()
    admin_context.close()


def test_every_page_fits_a_phone(browser, live_server, app, artifacts):
    from sqlalchemy import select

    from tests.helpers import db_scalar, db_update
    from webapp.models import User

    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    for path in ("/login", "/register"):
        page.goto(f"{live_server}{path}")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
    sign_up(page, live_server, "phone@example.com")
    db_update(app, User, db_scalar(app, select(User.id)), is_admin=True)
    create_and_start(page, live_server, "W" * 80, buy_in=300)  # 80 characters and no space to break at
    for path in ("/strategies", "/strategies/new", "/strategies/1", "/strategies/1/edit", "/broker", "/admin",
                 "/settings/risk"):
        page.goto(f"{live_server}{path}")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
        page.screenshot(path=str(artifacts / f"phone{path.replace('/', '-')}-390x844.png"), full_page=True)
        small = page.evaluate("""[...document.querySelectorAll('main button, main [role=button]')]
            .filter(b => b.offsetParent !== null && b.getBoundingClientRect().height < 40).map(b => b.textContent)""")
        assert small == [], (path, small)
    page.goto(f"{live_server}/strategies/new")
    page.screenshot(path=str(artifacts / "new-strategy-390x844.png"), full_page=True)
    context.close()
