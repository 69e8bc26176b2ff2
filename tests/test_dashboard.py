"""The dashboard (issue 14, part 2): the day summary, the strategies table running first with statuses in a
trader's words and P&L the Indian way, and at a phone's width compact rows with no sideways scroll."""
from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from tests.engine_helpers import trader
from tests.helpers import PASSWORD, api_strategy, csrf_token
from webapp import clock, keys
from webapp.extensions import db
from webapp.market_calendar import exchange_date
from webapp.models import OrderLog, Run, Strategy

LONG_NAME = "W" * 80


def _seed(app, email: str, long_names: bool = False) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Four strategies put in their states straight in the database: one finished today (bought 10 at
    ₹100.00, sold at ₹112.35: +₹123.50 realised), one in position (10 TCS bought at ₹1,500.00), one waiting
    to enter, one never started."""
    client = app.test_client()
    headers = trader(client, email)
    names = {"done": "Zeta done", "open": "Alpha open", "waiting": "Middle waiting", "new": "Beta new"}
    if long_names:
        names |= {"open": LONG_NAME, "waiting": "Rocket 🚀🚀🚀 " + "🚀" * 30}
    ids = {key: api_strategy(client, headers, name=name[:80], symbol="TCS" if key == "open" else "INFY")
           for key, name in names.items()}
    with app.app_context():
        now = clock.now()
        day = exchange_date(now).isoformat()

        def run(key: str, status: str, fills: list[tuple[str, str]], **fields: object) -> None:
            strategy = db.session.get(Strategy, ids[key])
            row = Run(strategy_id=strategy.id, run_date=day)
            db.session.add(row)
            db.session.flush()
            for side, price in fills:
                db.session.add(OrderLog(strategy_id=strategy.id, user_id=strategy.user_id, event=side,
                                        event_id=f"{strategy.id}:{side}:{row.id}", side=side, quantity=10,
                                        price=Decimal(price), broker_order_id=f"P{row.id}{side}", tag=f"t{row.id}{side[0]}",
                                        status="COMPLETE", filled_quantity=10, attempt=1, created_at=now, updated_at=now))
            strategy.run_id, strategy.run_date, strategy.status = row.id, day, status
            for name, value in fields.items():
                setattr(strategy, name, value)

        run("done", "completed", [("BUY", "100.00"), ("SELL", "112.35")], entry_price=Decimal("100.00"),
            exit_price=Decimal("112.35"))
        run("open", "in_position", [("BUY", "1500.00")], position=10, entry_price=Decimal("1500.00"),
            last_action="BUY")
        run("waiting", "waiting_entry", [])
        db.session.commit()
    return ids


def _login(client, email: str) -> None:  # type: ignore[no-untyped-def]
    token = csrf_token(client, "/login")
    response = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:300]


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_summary_order_and_trader_words(app, client, redis_conn):
    ids = _seed(app, "desk@example.com")
    redis_conn.set(keys.last_price("NSE", "TCS"), "1490.00")  # the open 10 TCS: −₹100.00
    _login(client, "desk@example.com")
    for path in ("/strategies", "/strategies/cards"):
        html = client.get(path).get_data(as_text=True)
        summary = re.search(r'<section class="day-summary".*?</section>', html, re.S).group(0)
        assert re.search(r'id="sum-realised" class="pnl-up">₹123.50<', summary)
        assert re.search(r'id="sum-unrealised" class="pnl-down">−₹100.00<', summary)
        assert re.search(r'id="sum-total" class="pnl-up">₹23.50<', summary)
        assert re.search(r'id="sum-open">1<', summary)
        assert "1 running · 1 waiting · 1 done today" in _text(summary)
        assert "Connected" in summary
        # The container stays the live part HTMX refreshes.
        assert re.search(r'<div id="strategy-list" data-live hx-get="/strategies/cards" hx-trigger="live-refresh"', html)
        rows = re.findall(r'<tr class="strategy-row" id="strategy-(\d+)">', html)
        assert [int(r) for r in rows] == [ids["open"], ids["waiting"], ids["new"], ids["done"]]
        text = _text(html)
        for words in ("In position", "Waiting to enter", "Not started", "Squared off at sell time"):
            assert words in text
        assert "waiting entry" not in text and "in position" not in text.replace("In position", "")
        open_row = re.search(rf'id="strategy-{ids["open"]}">.*?</tr>', html, re.S).group(0)
        assert 'data-price-of="NSE:TCS">₹1,490.00<' in open_row
        assert re.search(r'class="pnl-down" data-pnl-of="NSE:TCS" data-entry="1500.00" data-position="10"', open_row)
        assert "−₹100.00 (−0.67%)" in open_row and "₹1,500.00" in open_row and ">STOP<" in open_row
        new_row = re.search(rf'id="strategy-{ids["new"]}">.*?</tr>', html, re.S).group(0)
        assert "pnl-up" not in new_row and "pnl-down" not in new_row and ">START<" in new_row
        done_row = re.search(rf'id="strategy-{ids["done"]}">.*?</tr>', html, re.S).group(0)
        assert re.search(r'class="pnl-up">₹123.50 \(12.35%\)', done_row)


def test_broker_session_needing_a_login_links_to_it(app, client, redis_conn):
    from webapp.models import BrokerAccount
    _seed(app, "lapsed@example.com")
    with app.app_context():
        account = db.session.scalar(db.select(BrokerAccount))
        account.status = "login_required"
        db.session.commit()
    _login(client, "lapsed@example.com")
    summary = re.search(r'<section class="day-summary".*?</section>',
                        client.get("/strategies/cards").get_data(as_text=True), re.S).group(0)
    assert "Log in with Kite" in summary and "Connected" not in summary


@pytest.mark.browser
def test_table_on_desktop_and_phone(page, live_server, app, redis_conn, artifacts):
    ids = _seed(app, "screens-desk@example.com", long_names=True)
    redis_conn.set(keys.last_price("NSE", "TCS"), "1512.35")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live_server}/login")
    page.fill("#f-email", "screens-desk@example.com")
    page.fill("#f-password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{live_server}/strategies")
    rows = page.locator("#strategy-table tbody tr")
    expect(rows).to_have_count(4)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # A click on a header sorts by it, a second click reverses; the choice survives the live refresh.
    page.locator("#strategy-table th", has_text="Name").click()
    expect(rows.first).to_have_attribute("id", f"strategy-{ids['new']}")  # "Beta new" < "Rocket…" < "W…" < "Zeta"
    page.locator("#strategy-table th", has_text="Name").click()
    expect(rows.first).to_have_attribute("id", f"strategy-{ids['done']}")
    page.locator("#strategy-list").evaluate("el => htmx.trigger(el, 'live-refresh')")
    page.wait_for_timeout(300)
    expect(rows.first).to_have_attribute("id", f"strategy-{ids['done']}")
    page.locator("#strategy-table th", has_text="P&L").click()  # lowest first, "—" last
    expect(rows.last).to_have_attribute("id", re.compile(f"strategy-({ids['new']}|{ids['waiting']})"))
    page.evaluate("sessionStorage.clear()")
    page.reload()
    expect(rows.first).to_have_attribute("id", f"strategy-{ids['open']}")  # running first again
    page.screenshot(path=str(artifacts / "dashboard-table-1280x800.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(rows).to_have_count(4)
    assert page.evaluate("window.innerWidth") == 390
    width = page.evaluate("document.documentElement.scrollWidth")
    page.screenshot(path=str(artifacts / "dashboard-table-390x844.png"), full_page=True)
    assert width <= 390, f"page is {width}px wide"
    heights = page.evaluate("Array.from(document.querySelectorAll('#strategy-table tbody tr')).map(r => r.getBoundingClientRect().height)")
    assert max(heights) < 150, heights  # compact: a few lines a strategy, not a tall card
