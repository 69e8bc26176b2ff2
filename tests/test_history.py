"""Run history (issue 13, part 6): each run's entry, exit, P&L and how it ended, from its filled orders; the
realised total and the equity curve on the strategy page; CSV of runs and of orders from the page and the
API, owner-scoped."""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from playwright.sync_api import expect
from sqlalchemy import event, select

from tests.engine_helpers import orders, seconds_ahead, start, trader, wait_status
from tests.helpers import PASSWORD, api_register, api_strategy, browser_login, csrf_token, db_update
from webapp import clock, keys, money
from webapp.extensions import db
from webapp.market_calendar import exchange_date
from webapp.models import OrderLog, Run, Strategy
from webapp.services import history


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def _csv(response) -> list[dict]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(response.get_data().decode("utf-8"))))


def _page_login(app, email: str):  # type: ignore[no-untyped-def]
    page = app.test_client()
    token = csrf_token(page, "/login")
    response = page.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 303
    return page


# Three runs through the real worker and scheduler (paper broker), each at prices we set: the last tick the
# paper exchange fills at. Run 3 is short: it enters with a SELL and buys back.
RUNS = [("long", "1500.00", "1512.50", "125.00", "0.83", "125.00"),
        ("long", "1510.00", "1495.25", "-147.50", "-0.98", "-22.50"),
        ("short", "1490.00", "1480.40", "96.00", "0.64", "73.50")]


@pytest.mark.slow
def test_three_runs_through_the_engine_give_history_csv_and_page(client, engine, redis_conn, app):
    headers = trader(client, "history@example.com")
    sid = api_strategy(client, headers, buy_time=seconds_ahead(1.5), sell_time=seconds_ahead(3.5))
    run_ids = []
    for number, (direction, entry, exit_, *_) in enumerate(RUNS):
        if number:
            db_update(app, Strategy, sid, buy_time=seconds_ahead(1.5), sell_time=seconds_ahead(3.5),
                      direction=direction, stop_loss=Decimal("1600.00" if direction == "short" else "1400.50"))
        redis_conn.set(keys.last_price("NSE", "INFY"), entry)
        run_ids.append(start(client, headers, sid))
        wait_status(client, headers, sid, "in_position")
        redis_conn.set(keys.last_price("NSE", "INFY"), exit_)
        wait_status(client, headers, sid, "completed")
    with app.app_context():  # a day the strategy never ran, recorded as such (before the three)
        skipped = Run(strategy_id=sid, run_date=exchange_date(clock.now() - timedelta(days=1)).isoformat(),
                      status="skipped", reason="No broker session: log in with Kite first.")
        db.session.add(skipped)
        db.session.commit()
        skipped_id = skipped.id

    body = client.get(f"/api/v1/strategy/{sid}/runs", headers=headers).json
    assert [r["run_id"] for r in body["runs"]] == [skipped_id, *run_ids]
    assert body["runs"][0]["status"] == "skipped" and body["runs"][0]["reason"].startswith("No broker session")
    assert body["runs"][0]["pnl"] is None and body["runs"][0]["cumulative_pnl"] == "0.00"
    for row, (direction, entry, exit_, pnl, percent, cumulative) in zip(body["runs"][1:], RUNS):
        assert (row["direction"], row["status"], row["status_text"]) == (direction, "completed", "Squared off at sell time")
        assert (row["entry_quantity"], row["entry_price"], row["exit_quantity"], row["exit_price"]) == (10, entry, 10, exit_)
        assert (row["pnl"], row["pnl_percent"], row["cumulative_pnl"], row["realised"]) == (pnl, percent, cumulative, True)
    assert [r["current"] for r in body["runs"]] == [False, False, False, True]
    assert body["summary"] == {"runs": 3, "skipped": 1, "traded": 3, "wins": 2, "losses": 1,
                               "realised_pnl": "73.50", "unrealised_pnl": None}
    assert [p["cumulative_pnl"] for p in body["equity"]] == ["125.00", "-22.50", "73.50"]

    # The P&L per run is the orders' own: what was sold minus what was bought, per run id.
    logged = orders(client, headers, sid)
    for row in body["runs"][1:]:
        mine = [o for o in logged if o["event_id"].endswith(f":{row['run_id']}") and o["status"] == "COMPLETE"]
        value = {side: sum(Decimal(o["price"]) * o["filled_quantity"] for o in mine if o["side"] == side)
                 for side in ("BUY", "SELL")}
        assert Decimal(row["pnl"]) == value["SELL"] - value["BUY"]

    runs_csv = client.get(f"/api/v1/strategy/{sid}/runs.csv", headers=headers)
    assert runs_csv.headers["Content-Disposition"] == f'attachment; filename="strategy-{sid}-runs.csv"'
    lines = _csv(runs_csv)
    assert [(r["run_id"], r["status"], r["pnl"], r["cumulative_pnl"]) for r in lines] == \
        [(str(skipped_id), "skipped", "", "0.00")] + [(str(i), "completed", r[3], r[5]) for i, r in zip(run_ids, RUNS)]
    assert lines[3]["entry_price"] == "1490.00" and lines[3]["direction"] == "short"  # plain decimals, no ₹

    orders_csv = client.get(f"/api/v1/strategy/{sid}/orders.csv", headers=headers)
    assert orders_csv.headers["Content-Disposition"] == f'attachment; filename="strategy-{sid}-orders.csv"'
    lines = _csv(orders_csv)
    assert len(lines) == len(logged) == 6  # one line per order
    for line, order in zip(lines, logged):
        assert line["run_id"] == order["event_id"].rsplit(":", 1)[1]
        assert (line["event"], line["side"], line["tag"], line["broker_order_id"], line["status"]) == \
            (order["event"], order["side"], order["tag"], order["broker_order_id"], "COMPLETE")
        assert (line["quantity"], line["filled_quantity"], line["average_price"]) == ("10", "10", order["price"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", line["date_ist"]) and re.fullmatch(r"\d\d:\d\d:\d\d", line["time_ist"])
    assert [line["run_id"] for line in lines] == [str(i) for i in run_ids for _ in (0, 1)]
    assert [line["side"] for line in lines] == ["BUY", "SELL", "BUY", "SELL", "SELL", "BUY"]

    # The strategy page: the history table, totals in rupees the Indian way, the equity curve's holder.
    page = _page_login(app, "history@example.com")
    html = page.get(f"/strategies/{sid}").get_data(as_text=True)
    assert 'id="run-history-table"' in html and 'id="equity-chart"' in html
    points = json.loads(re.search(r"data-points='([^']*)'", html).group(1))
    assert [p["run_id"] for p in points] == run_ids
    assert "₹1,512.50" in html and "−₹147.50" in html and "₹73.50" in html and "Skipped" in html
    assert f'href="/strategies/{sid}/runs.csv"' in html and f'href="/strategies/{sid}/orders.csv"' in html
    assert _csv(page.get(f"/strategies/{sid}/orders.csv")) == lines
    assert page.get(f"/strategies/{sid}/runs").json["summary"]["realised_pnl"] == "73.50"
    assert 'id="run-history"' in page.get(f"/strategies/{sid}/history").get_data(as_text=True)

    # Another user sees none of it: 404 everywhere, API and pages.
    other = api_register(client, "nosy@example.com")
    for path in ("runs", "runs.csv", "orders.csv"):
        assert client.get(f"/api/v1/strategy/{sid}/{path}", headers=other).status_code == 404
    nosy = app.test_client()
    browser_login(nosy, "nosy2@example.com")
    for path in ("runs", "runs.csv", "orders.csv", "history", ""):
        assert nosy.get(f"/strategies/{sid}/{path}".rstrip("/")).status_code == 404
    assert client.get(f"/api/v1/strategy/{sid}/runs.csv").status_code == 401  # no credentials at all


def _seed(app, user_email: str = "seed@example.com") -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    """Runs written straight to the database: a long win, a skipped day, a short loss, a failed run whose
    position was left open, and the current run in position."""
    client = app.test_client()
    headers = trader(client, user_email)
    sid = api_strategy(client, headers)
    with app.app_context():
        strategy = db.session.get(Strategy, sid)
        now = clock.now()

        def run(day: int, **fields) -> Run:  # type: ignore[no-untyped-def]
            row = Run(strategy_id=sid, run_date=f"2026-11-{day:02d}", **fields)
            db.session.add(row)
            db.session.flush()
            return row

        def order(run_: Run, kind: str, side: str, filled: int, price: str, attempt: int = 1,
                  status: str = "COMPLETE", error: str | None = None) -> None:
            db.session.add(OrderLog(strategy_id=sid, user_id=strategy.user_id, event=kind,
                                    event_id=f"{sid}:{kind}:{run_.id}", side=side, quantity=10, price=Decimal(price)
                                    if filled else None, broker_order_id=f"P{run_.id}{kind}{attempt}" if filled else None,
                                    tag=f"{sid}{kind[0]}{run_.id}", status=status, filled_quantity=filled,
                                    attempt=attempt, error=error, created_at=now, updated_at=now))

        first = run(16, status="completed", reason="squared off at sell time")
        order(first, "BUY", "BUY", 10, "100000.00")
        order(first, "SELL", "SELL", 10, "100123.45")
        skipped = run(17, status="skipped", reason="Daily loss limit reached")
        short = run(18, status="stopped_loss", reason="stop-loss hit at 1520.00", direction="short")
        order(short, "BUY", "SELL", 10, "1500.00")
        order(short, "STOPLOSS", "BUY", 0, "0", status="REJECTED", error="=HYPERLINK(\"x\") rejected")
        order(short, "STOPLOSS", "BUY", 10, "1506.20", attempt=2)
        failed = run(19, status="failed", reason="exit SELL rejected; position of 4 still open")
        order(failed, "BUY", "BUY", 4, "1500.00")
        current = run(20)
        order(current, "BUY", "BUY", 10, "1500.00")
        strategy.run_id, strategy.run_date, strategy.status, strategy.position = current.id, "2026-11-20", "in_position", 10
        strategy.entry_price = Decimal("1500.00")
        db.session.commit()
        ids = [first.id, skipped.id, short.id, failed.id, current.id]
    return sid, ids


def test_history_of_seeded_runs_in_two_queries(app, redis_conn):
    sid, (first, skipped, short, failed, current) = _seed(app)
    with app.app_context():
        strategy = db.session.get(Strategy, sid)
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        rows = history.runs(strategy, "1510.00")
        event.remove(db.engine, "before_cursor_execute", listener)
        assert len(statements) == 2  # its runs and its orders, however many runs
        by_id = {row.run_id: row for row in rows}
        assert [row.run_id for row in rows] == [first, skipped, short, failed, current]
        assert (by_id[first].pnl, by_id[first].pnl_percent) == (Decimal("1234.50"), Decimal("0.12"))
        assert by_id[skipped].status_text == "Skipped" and by_id[skipped].pnl is None
        assert (by_id[short].entry_quantity, by_id[short].exit_price, by_id[short].pnl) == (10, Decimal("1506.20"), Decimal("-62.00"))
        assert by_id[short].orders == 3 and by_id[short].status_text == "Stop-loss hit"
        assert (by_id[failed].open_quantity, by_id[failed].pnl, by_id[failed].realised) == (4, None, False)
        now = by_id[current]
        assert (now.current, now.in_progress, now.status, now.pnl, now.realised) == (True, True, "in_position", Decimal("100.00"), False)
        assert [row.cumulative_pnl for row in rows] == [Decimal("1234.50")] * 2 + [Decimal("1172.50")] * 3
        totals = history.summary(rows)
        assert (totals["realised_pnl"], totals["unrealised_pnl"], totals["wins"], totals["losses"]) == \
            (Decimal("1172.50"), Decimal("100.00"), 1, 1)
        lines = list(csv.DictReader(io.StringIO(history.orders_csv(strategy))))
        assert lines[3]["error"].startswith("'=HYPERLINK")  # no formula for a spreadsheet to run
        assert lines[3]["average_price"] == "" and lines[4]["attempt"] == "2"
    assert money.inr(Decimal("123456.5")) == "₹1,23,456.50" and money.inr(Decimal("-62")) == "−₹62.00"
    assert money.inr(Decimal("12345678.9")) == "₹1,23,45,678.90" and money.inr(None) == "—"


@pytest.mark.browser
def test_strategy_page_with_its_run_history_in_a_browser(page, live_server, app, redis_conn, artifacts):
    sid, _ = _seed(app, "screens@example.com")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live_server}/login")
    page.fill("#f-email", "screens@example.com")
    page.fill("#f-password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{live_server}/strategies")
    page.goto(f"{live_server}/strategies/{sid}")
    # Locators, not handles: the live panel may swap the history section in again at any moment.
    chart = page.locator("#equity-chart")
    expect(chart).to_have_attribute("data-drawn", "2")
    expect(chart.locator("canvas").first).to_be_visible()
    page.screenshot(path=str(artifacts / "history-1280x800.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    expect(chart).to_have_attribute("data-drawn", "2")
    expect(page.locator("#run-history")).to_be_visible()
    page.screenshot(path=str(artifacts / "history-390x844.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
