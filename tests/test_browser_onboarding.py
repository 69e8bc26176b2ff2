"""A new user's first visit, driven through Debian's chromium: register, connect the paper broker, create a
strategy, log out and back in; and the new-strategy form's errors at a phone's width."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import func, select

from tests.helpers import PAPER_CREDENTIALS, PASSWORD, STRATEGY, db_scalar
from webapp.models import BrokerAccount, Strategy

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def watch_for_errors(page: Page, allowed: tuple[tuple[str, str, int], ...] = ()) -> list[str]:
    """Console errors (a CSP violation is one), uncaught exceptions, failed requests and HTTP errors, collected
    for a final assert. `allowed` holds the (method, path, status) answers a test expects, e.g. a 422."""
    problems: list[str] = []

    def on_console(msg) -> None:  # type: ignore[no-untyped-def]
        # HTTP errors are judged by on_response, which knows the URL; everything else counts.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            problems.append(f"console: {msg.text}")

    def on_response(response) -> None:  # type: ignore[no-untyped-def]
        path = urlsplit(response.url).path
        if response.status >= 400 and path != "/favicon.ico" \
                and (response.request.method, path, response.status) not in allowed:
            problems.append(f"{response.request.method} {path} -> {response.status}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    def on_failed(request) -> None:  # type: ignore[no-untyped-def]
        # A live refresh still in flight when the page navigates is cancelled by the browser: not a fault.
        if request.failure != "net::ERR_ABORTED":
            problems.append(f"failed: {request.method} {request.url} ({request.failure})")

    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    return problems


def url(base: str, path: str) -> re.Pattern[str]:
    return re.compile(re.escape(base + path) + r"$")


def register(page: Page, base: str, email: str) -> None:
    page.goto(base + "/register")
    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    # The HTMX post answers 204 + HX-Redirect: the browser lands on the broker page, logged in.
    expect(page).to_have_url(url(base, "/broker"))
    expect(page.get_by_role("heading", name="Broker account")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Welcome!")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def fill_strategy(page: Page, values: dict) -> None:
    page.get_by_label("Name").fill(str(values["name"]))
    page.get_by_label("Symbol").fill(str(values["symbol"]))
    page.get_by_label("Exchange").select_option(str(values["exchange"]))
    page.get_by_label("Quantity (shares)").fill(str(values["quantity"]))
    page.get_by_label("Product").select_option(str(values["product"]))
    page.get_by_label("Buy at (IST)").fill(str(values["buy_time"]))
    page.get_by_label("Sell at (IST)").fill(str(values["sell_time"]))
    page.get_by_label("Stop-loss price (₹)").fill(str(values["stop_loss"]))


def expect_listed(page: Page) -> None:
    card = page.locator("#strategy-list tr.strategy-row")
    expect(card).to_have_count(1)
    expect(card.get_by_role("link", name=STRATEGY["name"])).to_be_visible()
    expect(card).to_contain_text(f"{STRATEGY['exchange']}:{STRATEGY['symbol']}")


def test_register_connect_create_logout_login(app, live_server: str, page: Page, artifacts: Path) -> None:
    base = live_server
    page.set_viewport_size(DESKTOP)
    problems = watch_for_errors(page)
    email = "onboarding@example.com"

    register(page, base, email)

    # Connect the paper broker.
    for field, label in (("api_key", "API key"), ("api_secret", "API secret"), ("access_token", "Access token")):
        page.get_by_label(label, exact=True).fill(PAPER_CREDENTIALS[field])
    page.get_by_role("button", name="Connect").click()
    expect(page).to_have_url(url(base, "/strategies"))
    expect(page.get_by_role("status")).to_have_text("Broker account connected.")
    expect(page.locator(".banner-warn")).to_have_count(0)  # no "No broker account yet"

    # The broker page shows the key's last 4 characters and no secret.
    page.goto(base + "/broker")
    connected = page.locator("p.connected")
    expect(connected).to_contain_text("paper")
    expect(connected.locator("code")).to_have_text("…" + PAPER_CREDENTIALS["api_key"][-4:])
    expect(page.get_by_role("button", name="Replace credentials")).to_be_visible()
    html = page.content()
    for secret in (PAPER_CREDENTIALS["api_secret"], PAPER_CREDENTIALS["access_token"], PAPER_CREDENTIALS["api_key"]):
        assert secret not in html
    assert db_scalar(app, select(func.count(BrokerAccount.id))) == 1

    # Create a strategy through the New strategy form.
    page.get_by_role("link", name="Strategies", exact=True).click()
    expect(page).to_have_url(url(base, "/strategies"))
    expect(page.locator("p.empty")).to_contain_text("No strategies yet")
    page.get_by_role("button", name="New strategy").click()
    expect(page).to_have_url(url(base, "/strategies/new"))
    fill_strategy(page, STRATEGY)
    page.get_by_role("button", name="Create strategy").click()
    expect(page).to_have_url(re.compile(re.escape(base) + r"/strategies/\d+$"))
    expect(page.get_by_role("heading", name=STRATEGY["name"])).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text(f"Strategy “{STRATEGY['name']}” created.")
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text("NSE:INFY")
    expect(facts).to_contain_text("09:20:00 IST")
    expect(facts).to_contain_text("15:00:00 IST")
    expect(facts).to_contain_text("₹1,400.50")

    page.get_by_role("link", name="Strategies", exact=True).click()
    expect(page).to_have_url(url(base, "/strategies"))
    expect_listed(page)
    page.screenshot(path=str(artifacts / "onboarding-desktop-strategies.png"), full_page=True)

    # Log out, then in again through the login form.
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(url(base, "/login"))
    expect(page.get_by_role("link", name="Log in")).to_be_visible()
    page.goto(base + "/strategies")
    expect(page).to_have_url(re.compile(re.escape(base) + r"/login\?next="))  # the list needs a login
    page.goto(base + "/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(url(base, "/strategies"))
    expect_listed(page)

    assert db_scalar(app, select(func.count(Strategy.id))) == 1
    assert problems == []


BAD = {**STRATEGY, "name": "Bad one", "symbol": "NOPE", "quantity": 0,
       "buy_time": "15:00", "sell_time": "09:20", "stop_loss": ""}
EXPECTED_ERRORS = {
    "symbol": "NOPE is not a known NSE instrument.",
    "quantity": "Must be between 1 and",
    "sell_time": "Must be after the buy time.",
    "stop_loss": "Enter a price in rupees",
}


def test_new_strategy_form_errors_at_phone_width(app, live_server: str, browser: Browser, artifacts: Path) -> None:
    base = live_server
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        problems = watch_for_errors(page, (("POST", "/strategies/new", 422),))
        register(page, base, "phone@example.com")

        page.goto(base + "/strategies/new")
        expect(page.get_by_role("heading", name="New strategy")).to_be_visible()
        fill_strategy(page, BAD)
        page.evaluate("window.__samePage = true")  # survives an HTMX swap, not a page load
        page.get_by_role("button", name="Create strategy").click()

        form = page.locator("#strategy-form")
        for field, message in EXPECTED_ERRORS.items():
            # The message sits in the field's own label, right under its input, and the input points at it.
            error = form.locator(f"label[for='f-{field}'] .field-error")
            expect(error).to_contain_text(message)
            expect(error).to_be_visible()
            field_input = form.locator(f"#f-{field}")
            expect(field_input).to_have_attribute("aria-invalid", "true")
            expect(field_input).to_have_attribute("aria-describedby", f"e-{field}")
        expect(form.locator(".field-error")).to_have_count(len(EXPECTED_ERRORS))
        # The valid values were kept for the user to fix the rest.
        expect(form.get_by_label("Name")).to_have_value("Bad one")
        expect(form.get_by_label("Symbol")).to_have_value("NOPE")
        expect(page).to_have_url(url(base, "/strategies/new"))
        assert page.evaluate("window.__samePage") is True, "the form was not swapped in place by HTMX"

        # No sideways scrolling on a phone (and no auto-zoom-out hiding it).
        assert page.evaluate("window.innerWidth") == PHONE["width"]
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= page.evaluate("window.innerWidth"), f"page is {scroll_width}px wide"
        page.screenshot(path=str(artifacts / "onboarding-phone-form-errors.png"), full_page=True)

        assert db_scalar(app, select(func.count(Strategy.id))) == 0
        page.goto(base + "/strategies")
        expect(page.locator("p.empty")).to_contain_text("No strategies yet")
        expect(page.locator("#strategy-list tr.strategy-row")).to_have_count(0)
        assert problems == []
    finally:
        context.close()


LONG_NAME = "W" * 80  # 80 characters and no space to break at
SIZES = {"desktop": DESKTOP, "phone": PHONE}


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_at_desktop_and_phone_size(app, live_server: str, browser: Browser, artifacts: Path,
                                              size: str) -> None:
    """Every page, logged out and in (as an admin), at 1280x800 and at 390x844: no sideways scrolling, a
    screenshot of each ({size}-{page}-{w}x{h}.png), and on a phone no button in the page under 40 px tall."""
    from tests.helpers import db_update
    from webapp.models import User

    base, viewport = live_server, SIZES[size]
    phone = size == "phone"
    context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone)
    try:
        page = context.new_page()
        problems = watch_for_errors(page)

        def shoot(name: str) -> None:
            assert page.evaluate("window.innerWidth") == viewport["width"]
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= viewport["width"], f"{name} is {scroll_width}px wide"
            page.screenshot(path=str(artifacts / f"{size}-{name}-{viewport['width']}x{viewport['height']}.png"),
                            full_page=True)
            if phone:
                small = page.evaluate("""[...document.querySelectorAll('main button, main [role=button]')]
                    .filter(b => b.offsetParent !== null && b.getBoundingClientRect().height < 40)
                    .map(b => b.textContent.trim())""")
                assert small == [], (name, small)

        for path, name in (("/login", "login"), ("/register", "register")):
            page.goto(base + path)
            shoot(name)

        register(page, base, f"{size}@example.com")
        for field, label in (("api_key", "API key"), ("api_secret", "API secret"), ("access_token", "Access token")):
            page.get_by_label(label, exact=True).fill(PAPER_CREDENTIALS[field])
        page.get_by_role("button", name="Connect").click()
        expect(page).to_have_url(url(base, "/strategies"))
        db_update(app, User, db_scalar(app, select(User.id)), is_admin=True)

        for values in ({**STRATEGY, "name": LONG_NAME}, {**STRATEGY, "name": "Rocket 🚀 TCS", "symbol": "TCS"}):
            page.goto(base + "/strategies/new")
            fill_strategy(page, values)
            page.get_by_role("button", name="Create strategy").click()
            expect(page).to_have_url(re.compile(re.escape(base) + r"/strategies/\d+$"))
        strategy_id = db_scalar(app, select(func.min(Strategy.id)))

        for path, name in (("/strategies", "dashboard"), ("/strategies/new", "new-strategy"),
                           (f"/strategies/{strategy_id}", "strategy"), (f"/strategies/{strategy_id}/edit", "edit-strategy"),
                           ("/broker", "broker"), ("/settings/risk", "risk-limits"), ("/settings/security", "security"),
                           ("/settings/notifications", "notifications"), ("/admin", "admin")):
            page.goto(base + path)
            expect(page.locator("main h1")).to_be_visible()
            if name in ("security", "notifications"):  # nothing live here: no badge stuck on "connecting"
                expect(page.locator("#live-indicator")).to_be_hidden()
            shoot(name)

        # The time fields speak 24-hour IST whatever the browser's locale: plain text, HH:MM or HH:MM:SS.
        page.goto(f"{base}/strategies/{strategy_id}/edit")
        for field, value in (("buy_time", "09:20:00"), ("sell_time", "15:00:00")):
            time_input = page.locator(f"#f-{field}")
            expect(time_input).to_have_attribute("type", "text")
            expect(time_input).to_have_value(value)
        assert problems == []
    finally:
        context.close()
