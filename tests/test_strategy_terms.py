"""The strategy's "More options" (issue 13): direction, stop-loss and target as price / % / points,
trailing and breakeven, LIMIT→MARKET entries, recurring weekdays. Each is taken and echoed by the JSON API
through the same validator as the form, each bad value is explained on its own field, and the HTML form
keeps them folded away until one is wrong."""
from __future__ import annotations

import re

import pytest

from tests.helpers import STRATEGY, api_register, api_strategy, browser_login, csrf_token, db_row
from webapp import keys
from webapp.models import Strategy

# INFY's paper catalogue price is 1520.35 (no tick in Redis yet); STRATEGY's stop is 1400.50.
FULL = {**STRATEGY, "direction": "short", "stop_loss_type": "percent", "stop_loss": "1.5", "target_type": "points",
        "target": "25", "trail_unit": "points", "trail_every": "10", "trail_by": "5", "breakeven_at": "8",
        "order_type": "LIMIT", "limit_buffer_pct": "0.25", "limit_wait_seconds": 15, "weekdays": "024"}


def field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'<small id="e-([a-z_]+)" class="field-error">([^<]*)</small>', html))


def details_open(html: str) -> bool:
    tag = re.search(r'<details class="more-options"[^>]*>', html).group(0)
    return " open" in tag


# --- JSON API


def test_every_new_field_is_accepted_and_echoed(app, client):
    headers = api_register(client, "full@example.com")
    created = client.post("/api/v1/strategy/create", json=FULL, headers=headers)
    assert created.status_code == 201, created.json
    s = created.json["strategy"]
    assert {k: s[k] for k in FULL if k not in STRATEGY or k == "stop_loss"} == {
        "direction": "short", "stop_loss_type": "percent", "stop_loss": "1.50", "target_type": "points",
        "target": "25.00", "trail_unit": "points", "trail_every": "10.00", "trail_by": "5.00",
        "breakeven_at": "8.00", "order_type": "LIMIT", "limit_buffer_pct": "0.250", "limit_wait_seconds": 15,
        "weekdays": "024"}
    assert s["deployed"] is False
    assert client.get(f"/api/v1/strategy/{s['id']}", headers=headers).json["strategy"] == s


def test_defaults_keep_a_simple_strategy_simple(app, client):
    headers = api_register(client, "simple@example.com")
    s = client.get(f"/api/v1/strategy/{api_strategy(client, headers)}", headers=headers).json["strategy"]
    assert {k: s[k] for k in ("direction", "stop_loss_type", "target_type", "target", "trail_unit", "trail_every",
                              "trail_by", "breakeven_at", "order_type", "limit_buffer_pct", "limit_wait_seconds",
                              "weekdays", "deployed")} == {
        "direction": "long", "stop_loss_type": "price", "target_type": None, "target": None, "trail_unit": None,
        "trail_every": None, "trail_by": None, "breakeven_at": None, "order_type": "MARKET",
        "limit_buffer_pct": None, "limit_wait_seconds": None, "weekdays": None, "deployed": False}


def test_update_merges_the_new_fields_and_round_trips_decimals_and_nulls(app, client):
    headers = api_register(client, "merge@example.com")
    sid = api_strategy(client, headers, **{k: v for k, v in FULL.items() if k not in STRATEGY or k == "stop_loss"})
    # Unrelated change: every term is kept as it was (Decimals back through the validator as strings).
    kept = client.put(f"/api/v1/strategy/{sid}", json={"quantity": 3}, headers=headers)
    assert kept.status_code == 200, kept.json
    assert kept.json["strategy"]["limit_buffer_pct"] == "0.250" and kept.json["strategy"]["trail_by"] == "5.00"
    assert kept.json["strategy"]["weekdays"] == "024" and kept.json["strategy"]["quantity"] == 3
    # Clearing: back to MARKET, no target, no trailing, one day per START.
    cleared = client.put(f"/api/v1/strategy/{sid}", json={
        "order_type": "MARKET", "target_type": None, "trail_every": None, "trail_by": "", "breakeven_at": None,
        "weekdays": "", "direction": "long", "stop_loss_type": "price", "stop_loss": "1400"}, headers=headers)
    assert cleared.status_code == 200, cleared.json
    s = cleared.json["strategy"]
    assert (s["order_type"], s["limit_buffer_pct"], s["limit_wait_seconds"]) == ("MARKET", None, None)
    assert (s["target_type"], s["target"], s["trail_unit"], s["trail_every"], s["trail_by"], s["breakeven_at"]) == \
        (None, None, None, None, None, None)
    assert s["weekdays"] is None and s["direction"] == "long" and s["stop_loss"] == "1400.00"
    row = db_row(app, Strategy, sid)
    assert row["target"] is None and row["limit_buffer_pct"] is None and row["weekdays"] is None


def test_a_limit_without_buffer_or_wait_takes_the_engine_defaults(app, client):
    from webapp.extensions import db
    from webapp.strategies.terms_text import facts

    headers = api_register(client, "limitdefaults@example.com")
    sid = api_strategy(client, headers, order_type="LIMIT", limit_buffer_pct="", limit_wait_seconds=None)
    row = db_row(app, Strategy, sid)
    assert (row["order_type"], row["limit_buffer_pct"], row["limit_wait_seconds"]) == ("LIMIT", None, None)
    with app.app_context():  # as the cards and the strategy page say it: LIMIT_BUFFER_PCT, LIMIT_WAIT_SECONDS
        assert ("Orders", "LIMIT ±0.1%, MARKET after 3 s unfilled") in facts(db.session.get(Strategy, sid), {})


def test_weekdays_take_a_list_and_are_sorted_once_each(app, client):
    headers = api_register(client, "days@example.com")
    sid = api_strategy(client, headers, weekdays=[4, 0, 0, "2"])
    assert client.get(f"/api/v1/strategy/{sid}", headers=headers).json["strategy"]["weekdays"] == "024"


BAD_TERMS = [
    ({"direction": "sideways"}, "direction", "long (buy first) or short"),
    ({"direction": "short", "product": "CNC", "stop_loss": "1600"}, "direction", "must be intraday (MIS)"),
    ({"stop_loss_type": "ticks"}, "stop_loss_type", "price, percent or points"),
    ({"stop_loss_type": "percent", "stop_loss": "0"}, "stop_loss", "greater than 0"),
    ({"stop_loss_type": "percent", "stop_loss": "100"}, "stop_loss", "under 100%"),
    ({"stop_loss_type": "percent", "stop_loss": "abc"}, "stop_loss", "Enter a percentage"),
    ({"stop_loss_type": "points", "stop_loss": "-3"}, "stop_loss", "greater than 0"),
    ({"stop_loss": "1600"}, "stop_loss", "For a long, the stop must be below the last price (₹1520.35)"),
    ({"direction": "short", "stop_loss": "1400.50"}, "stop_loss",
     "For a short, the stop must be above the last price (₹1520.35)"),
    ({"target_type": "price", "target": "1500"}, "target", "For a long, the target must be above the last price"),
    ({"direction": "short", "stop_loss": "1600", "target_type": "price", "target": "1550"}, "target",
     "For a short, the target must be below the last price"),
    ({"target_type": "percent", "target": "0"}, "target", "greater than 0"),
    ({"stop_loss_type": "points", "stop_loss": "1600"}, "stop_loss", "would be below 0 (last price ₹1520.35)"),
    ({"direction": "short", "stop_loss": "1600", "target_type": "points", "target": "1520.35"}, "target",
     "would be below 0"),
    ({"target_type": "points"}, "target", "Enter the target, or choose no target"),
    ({"target_type": "gain", "target": "5"}, "target_type", "none, price, percent or points"),
    ({"direction": "short", "stop_loss": "1600", "target_type": "percent", "target": "100"}, "target", "under 100%"),
    ({"trail_every": "0", "trail_by": "1"}, "trail_every", "greater than 0"),
    ({"trail_every": "10", "trail_by": "0"}, "trail_by", "greater than 0"),
    ({"trail_every": "10"}, "trail_by", "Fill both, or neither"),
    ({"trail_by": "5"}, "trail_every", "Fill both, or neither"),
    ({"trail_every": "5", "trail_by": "10"}, "trail_by", "at most the step"),
    ({"trail_unit": "percent", "trail_every": "100", "trail_by": "1"}, "trail_every", "under 100%"),
    ({"trail_unit": "ticks", "trail_every": "10", "trail_by": "5"}, "trail_unit", "points or percent"),
    ({"breakeven_at": "0"}, "breakeven_at", "greater than 0"),
    ({"order_type": "STOP"}, "order_type", "MARKET or LIMIT"),
    ({"order_type": "LIMIT", "limit_buffer_pct": "half", "limit_wait_seconds": 10}, "limit_buffer_pct",
     "Enter a percentage"),
    ({"order_type": "LIMIT", "limit_buffer_pct": "0", "limit_wait_seconds": 10}, "limit_buffer_pct",
     "greater than 0"),
    ({"order_type": "LIMIT", "limit_buffer_pct": "5.5", "limit_wait_seconds": 10}, "limit_buffer_pct", "at most 5"),
    ({"order_type": "LIMIT", "limit_buffer_pct": "1", "limit_wait_seconds": 0}, "limit_wait_seconds", "1 to 60"),
    ({"order_type": "LIMIT", "limit_buffer_pct": "1", "limit_wait_seconds": 61}, "limit_wait_seconds", "1 to 60"),
    ({"order_type": "LIMIT", "limit_buffer_pct": "1", "limit_wait_seconds": "soon"}, "limit_wait_seconds", "1 to 60"),
    ({"weekdays": "56"}, "weekdays", "digits 0–4"),
    ({"weekdays": "mon"}, "weekdays", "digits 0–4"),
    ({"weekdays": 12}, "weekdays", "digits 0–4"),
]


@pytest.mark.parametrize("changes, field, message", BAD_TERMS)
def test_each_bad_term_is_explained_on_its_own_field(app, client, changes, field, message):
    headers = api_register(client, "bad@example.com")
    response = client.post("/api/v1/strategy/create", json={**STRATEGY, **changes}, headers=headers)
    assert response.status_code == 422, response.json
    assert message in response.json["fields"][field], response.json["fields"]
    assert list(response.json["fields"]) == [field], response.json["fields"]


def test_a_price_target_must_be_beyond_the_stop_when_no_price_is_known(app, client):
    """No catalogue price and no tick: the checks against the last price are skipped, the target is still
    checked against the stop."""
    headers = api_register(client, "noprice@example.com")
    from webapp import instruments
    instrument = instruments.lookup("NSE", "INFY")
    original = instrument.last_price
    object.__setattr__(instrument, "last_price", type(original)("0"))  # the catalogue knows no price
    try:
        above = client.post("/api/v1/strategy/create", json={**STRATEGY, "stop_loss": "9999"}, headers=headers)
        assert above.status_code == 201, above.json  # nothing to compare the stop with
        below = client.post("/api/v1/strategy/create", json={**STRATEGY, "target_type": "price", "target": "1300"},
                            headers=headers)
        assert below.status_code == 422 and "above the stop-loss (₹1400.50)" in below.json["fields"]["target"]
    finally:
        object.__setattr__(instrument, "last_price", original)


def test_the_listeners_last_tick_wins_over_the_catalogue(app, client, redis_conn):
    headers = api_register(client, "tick@example.com")
    redis_conn.set(keys.last_price("NSE", "INFY"), "1380.00")
    response = client.post("/api/v1/strategy/create", json=STRATEGY, headers=headers)
    assert response.status_code == 422
    assert "below the last price (₹1380.00)" in response.json["fields"]["stop_loss"]


def test_an_edit_that_leaves_the_stop_alone_is_not_refused_because_the_price_moved(app, client, redis_conn):
    headers = api_register(client, "moved@example.com")
    sid = api_strategy(client, headers)
    redis_conn.set(keys.last_price("NSE", "INFY"), "1380.00")  # the price fell through the stop since
    assert client.put(f"/api/v1/strategy/{sid}", json={"quantity": 2}, headers=headers).status_code == 200
    moved = client.put(f"/api/v1/strategy/{sid}", json={"stop_loss": "1390"}, headers=headers)
    assert moved.status_code == 422 and "below the last price" in moved.json["fields"]["stop_loss"]


# --- The HTML form


def test_the_form_folds_the_more_options_away_with_their_defaults(app, client):
    browser_login(client, "form@example.com")
    html = client.get("/strategies/new").get_data(as_text=True)
    assert not details_open(html)
    assert "More options" in html and "Buy at (IST)" in html and "Stop-loss price (₹)" in html
    for name, value in (("direction", "long"), ("stop_loss_type", "price"), ("target_type", ""),
                        ("trail_unit", "points"), ("order_type", "MARKET")):
        select = re.search(rf'<select id="f-{name}".*?</select>', html, re.S).group(0)
        assert re.search(rf'<option value="{value}" selected>', select), (name, select)
    assert 'name="limit_buffer_pct" type="text" value="0.1"' in html  # LIMIT_BUFFER_PCT, the engine's default
    assert 'name="limit_wait_seconds" type="number" value="3"' in html
    assert len(re.findall(r'type="checkbox" name="weekdays"', html)) == 5 and " checked" not in html
    assert 'id="last-price"' in html and "field-error" not in html


def test_a_wrong_more_option_opens_the_section_with_its_error(app, client):
    browser_login(client, "open@example.com")
    token = csrf_token(client, "/strategies/new")
    data = {**STRATEGY, "csrf_token": token, "direction": "short", "product": "CNC", "stop_loss": "1600",
            "trail_every": "10", "trail_by": "", "weekdays": ["0", "4"]}
    response = client.post("/strategies/new", data=data, headers={"HX-Request": "true"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert details_open(html)
    errors = field_errors(html)
    assert set(errors) == {"direction", "trail_by"}
    assert "intraday (MIS)" in errors["direction"] and "Fill both" in errors["trail_by"]
    # What the trader typed is kept: the short labels, the ticked days.
    assert "Sell short at (IST)" in html and "Buy back at (IST)" in html
    assert re.search(r'value="0"\s+checked', html) and re.search(r'value="4"\s+checked', html)
    assert 'aria-describedby="e-direction"' in html


def test_a_simple_field_error_leaves_more_options_closed(app, client):
    browser_login(client, "closed@example.com")
    token = csrf_token(client, "/strategies/new")
    response = client.post("/strategies/new", data={**STRATEGY, "csrf_token": token, "stop_loss": "1600"},
                           headers={"HX-Request": "true"})
    html = response.get_data(as_text=True)
    assert response.status_code == 422 and not details_open(html)
    assert "below the last price (₹1520.35)" in field_errors(html)["stop_loss"]


def test_the_form_creates_and_edits_a_recurring_short_with_every_option(app, client):
    browser_login(client, "create@example.com")
    token = csrf_token(client, "/strategies/new")
    data = {**FULL, "csrf_token": token, "weekdays": ["0", "2", "4"], "limit_wait_seconds": "15"}
    response = client.post("/strategies/new", data=data)
    assert response.status_code == 303, field_errors(response.get_data(as_text=True))
    sid = int(response.headers["Location"].rsplit("/", 1)[1])
    row = db_row(app, Strategy, sid)
    assert (row["direction"], row["stop_loss_type"], str(row["stop_loss"]), row["weekdays"]) == \
        ("short", "percent", "1.50", "024")
    assert (row["order_type"], str(row["limit_buffer_pct"]), row["limit_wait_seconds"]) == ("LIMIT", "0.250", 15)
    page = client.get(f"/strategies/{sid}/edit").get_data(as_text=True)
    assert "Stop-loss (% from the entry)" in page and 'value="1.50"' in page
    assert re.search(r'value="2"\s+checked', page) and not re.search(r'value="1"\s+checked', page)
    # Saving the edit form unchanged keeps everything; unticking every day makes it one day per START.
    unchanged = {**data, "weekdays": []}
    assert client.post(f"/strategies/{sid}/edit", data=unchanged).status_code == 303
    row = db_row(app, Strategy, sid)
    assert row["weekdays"] is None and str(row["trail_every"]) == "10.00" and row["direction"] == "short"


def test_the_last_price_is_shown_and_refreshed_for_another_symbol(app, client, redis_conn):
    browser_login(client, "price@example.com")
    token = csrf_token(client, "/strategies/new")
    html = client.post("/strategies/new", data={**STRATEGY, "csrf_token": token, "name": ""},
                       headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "Last price: ₹1520.35" in html
    assert "Last price: ₹3410.00" in client.get("/strategies/last-price?symbol=tcs&exchange=NSE").get_data(as_text=True)
    redis_conn.set(keys.last_price("NSE", "TCS"), "3399.95")
    assert "₹3399.95" in client.get("/strategies/last-price?symbol=TCS&exchange=NSE").get_data(as_text=True)
    assert "not known" in client.get("/strategies/last-price?symbol=NOPE&exchange=NSE").get_data(as_text=True)


# --- In a browser: the form with More options open, at a desktop's and a phone's width.

VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.mark.browser
@pytest.mark.parametrize("size", VIEWPORTS)
def test_more_options_in_a_browser(app, live_server, browser, artifacts, size):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    from tests.test_browser_onboarding import fill_strategy, register, watch_for_errors

    viewport = VIEWPORTS[size]
    context = browser.new_context(viewport=viewport, **({"is_mobile": True, "has_touch": True} if size == "phone" else {}))
    try:
        page = context.new_page()
        problems = watch_for_errors(page, (("POST", "/strategies/new", 422),))
        register(page, live_server, f"{size}@example.com")
        page.goto(live_server + "/strategies/new")
        form = page.locator("#strategy-form")
        expect(form.locator("details.more-options")).not_to_have_attribute("open", "")
        fill_strategy(page, STRATEGY)
        expect(form.locator("#last-price")).to_contain_text("₹1520.35")
        form.get_by_label("Symbol").fill("TCS")
        form.get_by_label("Symbol").dispatch_event("change")
        expect(form.locator("#last-price")).to_contain_text("₹3410.00")  # refreshed by HTMX
        form.get_by_label("Symbol").fill("INFY")
        form.get_by_label("Symbol").dispatch_event("change")
        form.locator("summary").click()
        expect(form.locator("details.more-options")).to_have_attribute("open", "")
        expect(form.get_by_label("Limit buffer (%)")).to_be_disabled()
        form.locator("#f-direction").select_option("short")
        expect(form.get_by_label("Sell short at (IST)")).to_be_visible()
        expect(form.get_by_label("Buy back at (IST)")).to_be_visible()
        form.locator("#f-stop_loss_type").select_option("percent")
        expect(form.locator("#stop-loss-label")).to_have_text("Stop-loss (% from the entry)")
        form.locator("#f-stop_loss").fill("1.5")
        expect(form.locator("#f-target")).to_be_disabled()
        form.locator("#f-target_type").select_option("points")
        form.locator("#f-target").fill("20")
        form.locator("#f-trail_every").fill("10")
        form.locator("#f-trail_by").fill("5")
        form.locator("#f-breakeven_at").fill("8")
        form.locator("#f-order_type").select_option("LIMIT")
        expect(form.get_by_label("Limit buffer (%)")).to_be_enabled()
        for day in ("Mon", "Wed", "Fri"):
            form.get_by_label(day, exact=True).check()

        # Nothing wider than the screen; inputs side by side start on one line.
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        misaligned = page.evaluate("""() => [...document.querySelectorAll('#strategy-form .grid')].flatMap(grid => {
            const tops = [...grid.querySelectorAll(':scope > label > input, :scope > label > select')]
              .map(el => el.getBoundingClientRect());
            const rows = {};
            tops.forEach(r => { const key = Math.round(r.left) < 0 ? 'x' : 'y'; (rows[key] = rows[key] || []).push(r); });
            const wide = tops.filter(r => r.right > document.documentElement.clientWidth + 1);
            const y = tops.map(r => Math.round(r.top));
            const sameRow = tops.length > 1 && new Set(tops.map(r => Math.round(r.left))).size === tops.length;
            return wide.length ? ['overflow'] : (sameRow && new Set(y).size > 1 ? [y.join(',')] : []);
        })""")
        assert misaligned == [], misaligned
        page.screenshot(path=str(artifacts / f"strategy-form-more-options-{size}.png"), full_page=True)

        # A refused save swaps the form back in with More options open at the wrong field, choices kept.
        form.locator("#f-trail_by").fill("50")
        page.get_by_role("button", name="Create strategy").click()
        expect(form.locator("#e-trail_by")).to_contain_text("at most the step")
        expect(form.locator("details.more-options")).to_have_attribute("open", "")
        expect(form.get_by_label("Sell short at (IST)")).to_be_visible()
        expect(form.locator("#f-limit_wait_seconds")).to_be_enabled()
        expect(form.locator("input[name=weekdays][value='2']")).to_be_checked()
        form.locator("#f-trail_by").fill("5")
        assert problems == []
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.get_by_role("button", name="Create strategy").click()
        assert posted.value.status == 204 and posted.value.headers.get("hx-redirect", "").startswith("/strategies/")
    finally:
        context.close()
