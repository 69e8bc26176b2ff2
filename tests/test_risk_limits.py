"""Risk limits (issue 13, part 5): a per-user daily loss limit over all their strategies (realised + open
positions at the last price) that, once hit, stops every strategy of that user through the engine, squares
every position off, refuses START for the rest of the day, and is audited and shown; and a maximum of open
positions per user. The halt runs through real worker, scheduler (with its risk watcher thread) and
listener processes, the price moved by the listener's scripted feed."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from rq import Queue
from sqlalchemy import event, select

from tests.conftest import wait_for
from tests.engine_helpers import (
    broker_orders, log_entries, orders, run_event, start, started_strategy, status, trader, wait_status,
)
from tests.helpers import PAPER_CREDENTIALS, PASSWORD, api_strategy, browser_login, csrf_token
from webapp import clock, keys
from webapp.engine.events import STOP
from webapp.extensions import db
from webapp.models import AuditEvent, DayHalt, OrderLog, Run, Strategy, User
from webapp.services import risk

ENTRY = Decimal("1520.35")  # INFY fills here on the paper exchange (no tick yet)
LOW = Decimal("1450.00")  # above the 1400.50 stop-loss: only the loss limit can act


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def user_row(app, email: str) -> User:  # type: ignore[no-untyped-def]
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        db.session.expunge(user)
        return user


def refusal(app, email: str) -> str | None:  # type: ignore[no-untyped-def]
    with app.app_context():
        return risk.start_refusal(db.session.scalar(select(User).where(User.email == email)), clock.now())



def test_hitting_the_daily_loss_limit_stops_and_squares_off_every_strategy_of_that_user_only(
        app, client, processes, redis_conn, tmp_path: Path):
    processes.env = {**processes.env, "RISK_CHECK_SECONDS": "0.5"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    processes.start("scheduler2", "jobs.scheduler")  # two watchers: one halt, one STOP per strategy
    page = app.test_client()
    browser_login(page, "loser@example.com")  # the halted user's browser, for the banner
    token = client.post("/api/v1/auth/login", json={"email": "loser@example.com", "password": PASSWORD}).json["token"]
    loser = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/broker/connect", json=PAPER_CREDENTIALS, headers=loser).status_code == 200
    assert client.put("/api/v1/risk", json={"daily_loss_limit": "2000"}, headers=loser).json["daily_loss_limit"] \
        == "2000.00"
    other = trader(client, "other@example.com")
    assert client.put("/api/v1/risk", json={"daily_loss_limit": "100000"}, headers=other).status_code == 200

    mine = [started_strategy(client, loser, buy_in=2, sell_in=600) for _ in range(3)]
    theirs = started_strategy(client, other, buy_in=2, sell_in=600)
    for sid in mine:
        assert wait_status(client, loser, sid, "in_position")["entry_price"] == str(ENTRY)
    wait_status(client, other, theirs, "in_position")
    with app.app_context():  # deployed for recurring runs: the halt is for the day, it stays deployed
        db.session.get(Strategy, mine[0]).deployed = True
        db.session.commit()
    assert client.get("/api/v1/risk", headers=loser).json["halt"] is None

    # INFY falls to 1450: (1450 − 1520.35) × 10 × 3 = −2,110.50, past the −2,000 limit; the other user's
    # −703.50 is far from theirs.
    feed = tmp_path / "fall.csv"
    feed.write_text("offset_seconds,symbol,price\n" + "".join(f"{0.5 + i / 2},INFY,{LOW}\n" for i in range(240)))
    processes.env = {**processes.env, "FEED": f"csv:{feed}"}
    processes.start("listener", "jobs.listener")

    for sid in mine:
        final = wait_status(client, loser, sid, "stopped", timeout=30)
        assert final["position"] == 0
        assert final["status_reason"].startswith("daily loss limit ₹2,000.00 hit: the day's P&L was −₹2,110.50")
    # Each squared off once: one STOP order, filled, and nothing else after the entry, at the broker too.
    for sid in mine:
        rows = orders(client, loser, sid)
        assert [(o["event"], o["side"], o["status"], o["filled_quantity"]) for o in rows] == [
            ("BUY", "BUY", "COMPLETE", 10), ("STOP", "SELL", "COMPLETE", 10)]
        assert rows[1]["price"] == str(LOW)
        assert broker_orders(redis_conn, run_event(STOP, sid).event_id) == 1

    user = user_row(app, "loser@example.com")
    with app.app_context():
        halts = db.session.scalars(select(DayHalt).where(DayHalt.user_id == user.id)).all()
        audits = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "daily_loss_limit_hit")).all()
        assert len(halts) == 1 and halts[0].trading_day == risk.trading_day(clock.now())
        assert len(audits) == 1 and audits[0].subject_user_id == user.id and audits[0].severity == "critical"
        assert audits[0].detail["pnl"] == "-2110.50" and audits[0].detail["daily_loss_limit"] == "2000.00"
        assert audits[0].detail["open_positions"] == 3
        assert db.session.get(Strategy, mine[0]).deployed
    critical = [e for name in ("scheduler", "scheduler2") for e in log_entries(processes, name)
                if e.get("msg") == "daily loss limit hit"]
    assert len(critical) == 1 and critical[0]["level"] == "CRITICAL" and critical[0]["pnl"] == "-2110.50"
    assert sorted(critical[0]["strategies_stopped"]) == sorted(mine)

    # A fourth START is refused for the rest of the day, with the reason.
    reason = refusal(app, "loser@example.com")
    assert reason is not None and reason.startswith("Daily loss limit hit at ")
    assert reason.endswith(" IST (−₹2,110.50 of −₹2,000.00): trading resumes next trading day.")
    fourth = api_strategy(client, loser, buy_time="11:00", sell_time="15:00")
    refused = client.post(f"/api/v1/strategy/{fourth}/start", headers=loser)
    assert refused.status_code == 409 and refused.json["message"] == reason
    # Shown: the API, the settings page and the banner on every page.
    shown = client.get("/api/v1/risk", headers=loser).json
    assert shown["halt"]["reason"] == halts[0].reason and shown["today"]["pnl"] == "-2110.50"
    assert shown["today"]["realised"] == "-2110.50" and shown["today"]["open_positions"] == 0
    for path in ("/strategies", "/settings/risk", "/broker"):
        html = page.get(path).get_data(as_text=True)
        assert 'id="day-halt"' in html and "Trading halted for today: daily loss limit hit at " in html, path
    assert "−₹2,110.50" in page.get("/settings/risk").get_data(as_text=True)

    # The other user, same symbol: untouched, still in position, no exit sent; not halted.
    held = status(client, other, theirs)
    assert held["status"] == "in_position" and held["position"] == 10
    assert [o["event"] for o in orders(client, other, theirs)] == ["BUY"]
    assert refusal(app, "other@example.com") is None
    other_page = app.test_client()
    browser_login(other_page, "third@example.com")
    assert 'id="day-halt"' not in other_page.get("/strategies").get_data(as_text=True)


def test_max_open_positions_refuses_the_start_past_it(app, client, redis_conn):
    headers = trader(client, "capped@example.com")
    assert client.put("/api/v1/risk", json={"max_open_positions": 2}, headers=headers).json["max_open_positions"] == 2
    sids = [api_strategy(client, headers, buy_time="11:00", sell_time="15:00") for _ in range(3)]
    assert refusal(app, "capped@example.com") is None
    start(client, headers, sids[0])
    assert refusal(app, "capped@example.com") is None
    start(client, headers, sids[1])
    reason = refusal(app, "capped@example.com")
    assert reason == ("You already have 2 running strategies, your maximum of open positions (2). Stop one, or "
                      "raise the limit in Settings → Risk limits.")
    refused = client.post(f"/api/v1/strategy/{sids[2]}/start", headers=headers)
    assert refused.status_code == 409 and refused.json["message"] == reason
    # A stopped one frees a place; no limit, no refusal.
    assert client.post(f"/api/v1/strategy/{sids[0]}/stop", headers=headers).status_code == 202
    with app.app_context():
        db.session.get(Strategy, sids[0]).status = "stopped"
        db.session.commit()
    assert refusal(app, "capped@example.com") is None
    assert client.put("/api/v1/risk", json={"max_open_positions": None}, headers=headers).status_code == 200
    assert refusal(app, "capped@example.com") is None
    with app.app_context():
        changes = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "risk_limits_changed")).all()
        assert [c.detail for c in changes] == [{"max_open_positions": {"from": None, "to": "2"}},
                                               {"max_open_positions": {"from": "2", "to": None}}]


def test_day_pnl_sums_finished_and_open_runs_of_the_day_in_either_direction_in_a_few_queries(app, redis_conn):
    """Realised from finished runs' fills, unrealised from open positions at the last price; other days,
    other users and unfilled orders do not count; the watcher's bulk total costs the same queries for
    one user as for twenty."""
    with app.app_context():
        day = risk.trading_day(clock.now())
        yesterday = risk.trading_day(clock.now() - timedelta(days=1))

        def user_with_runs(n: int, limit: str | None = "500") -> User:
            user = User(email=f"u{n}@example.com", daily_loss_limit=Decimal(limit) if limit else None)
            user.password_hash = "not-a-hash"  # never logs in
            db.session.add(user)
            db.session.flush()
            # A long run finished today: bought 10 at 100, sold 10 at 90 (−100).
            long_ = _strategy(user, "INFY", "long")
            _run(long_, day, [("BUY", "100", 10), ("SELL", "90", 10)], current=False)
            # A short run open today: sold 5 at 200; last price 210 (−50). Its earlier run yesterday: ignored.
            short = _strategy(user, "TCS", "short")
            _run(short, yesterday, [("SELL", "300", 5), ("BUY", "100", 5)], current=False)
            _run(short, day, [("SELL", "200", 5), ("BUY", "1", 0)], current=True, position=5)
            return user

        first = user_with_runs(0)
        db.session.commit()
        redis_conn.set(keys.last_price("NSE", "TCS"), "210")
        pnl = risk.day_pnl(first, day)
        assert (pnl.realised, pnl.unrealised, pnl.total, pnl.open_positions) == (-100, -50, -150, 1)
        assert not pnl.breached

        for n in range(1, 20):
            user_with_runs(n, limit="100" if n % 2 else None)
        db.session.commit()
        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            totals = risk.day_pnls(day)
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        assert len(statements) == 1  # one query for every limited user's runs of the day
        assert sorted(totals) == sorted([first.id] + [u.id for u in db.session.scalars(
            select(User).where(User.daily_loss_limit == Decimal("100")))])
        assert all(t.total == -150 for t in totals.values())
        assert {t.user_id for t in totals.values() if t.breached} == {u for u, t in totals.items()
                                                                      if t.limit == Decimal("100")}
        redis_conn.delete(keys.last_price("NSE", "TCS"))  # no price: the open run is left out, and said so
        assert risk.day_pnl(first, day).unpriced and risk.day_pnl(first, day).total == -100
        # Bought and squared off by the broker at its MIS cut-off (position 0, no exit fill of ours): not a
        # loss of the whole entry value, which would halt the user; left out, and said so.
        squared = _strategy(first, "SBIN", "long")
        _run(squared, day, [("BUY", "800", 10)], current=True, position=0)
        db.session.commit()
        redis_conn.set(keys.last_price("NSE", "TCS"), "210")
        after = risk.day_pnl(first, day)
        assert after.total == -150 and squared.id in after.unpriced and not after.breached


def _strategy(user: User, symbol: str, direction: str) -> Strategy:
    strategy = Strategy(user_id=user.id, name=symbol, symbol=symbol, exchange="NSE", quantity=10, buy_time="09:20:00",
                        sell_time="15:00:00", stop_loss=Decimal("1"), direction=direction, status="stopped")
    db.session.add(strategy)
    db.session.flush()
    return strategy


def _run(strategy: Strategy, day: str, fills: list[tuple[str, str, int]], current: bool, position: int = 0) -> None:
    run = Run(strategy_id=strategy.id, run_date=day, direction=strategy.direction)
    db.session.add(run)
    db.session.flush()
    for n, (side, price, filled) in enumerate(fills):
        db.session.add(OrderLog(strategy_id=strategy.id, user_id=strategy.user_id, event=f"E{n}",
                                event_id=f"{strategy.id}:E{n}:{run.id}", side=side, quantity=10, price=Decimal(price),
                                tag=f"t{run.id}{n}", status="COMPLETE", filled_quantity=filled))
    if current:
        strategy.run_id, strategy.run_date, strategy.position = run.id, day, position
        strategy.status = "in_position" if position else "stopped"


def test_risk_settings_page_and_api_refuse_bad_values_field_by_field(app, client):
    browser_login(client, "settings@example.com")
    html = client.get("/settings/risk").get_data(as_text=True)
    assert "Risk limits" in html and 'id="risk-pnl"' in html and "(no daily loss limit)" in html
    token = csrf_token(client, "/settings/risk")
    bad = client.post("/settings/risk", data={"daily_loss_limit": "-5", "max_open_positions": "two",
                                              "csrf_token": token}, headers={"HX-Request": "true"})
    assert bad.status_code == 422
    body = bad.get_data(as_text=True)
    assert body.startswith('<div id="risk-form">') or 'id="risk-form"' in body[:200]
    assert "must be more than ₹0" in body and "whole number from 1 to" in body and 'aria-invalid="true"' in body
    good = client.post("/settings/risk", data={"daily_loss_limit": "5,000.50", "max_open_positions": "3",
                                               "csrf_token": token}, headers={"HX-Request": "true"})
    assert good.status_code == 204 and good.headers["HX-Redirect"].endswith("/settings/risk")
    html = client.get("/settings/risk").get_data(as_text=True)
    assert "Risk limits saved." in html and "−₹5,000.50" in html and 'value="3"' in html

    api = client.put("/api/v1/risk", json={"daily_loss_limit": 0, "max_open_positions": 1.5},
                     headers={"X-CSRFToken": token})
    assert api.status_code == 422 and set(api.json["fields"]) == {"daily_loss_limit", "max_open_positions"}
    for value in ("abc", "1.001", True, [], "NaN", "1e20"):
        response = client.put("/api/v1/risk", json={"daily_loss_limit": value}, headers={"X-CSRFToken": token})
        assert response.status_code == 422, value
    kept = client.get("/api/v1/risk").json
    assert kept["daily_loss_limit"] == "5000.50" and kept["max_open_positions"] == 3  # nothing half-saved
    cleared = client.put("/api/v1/risk", json={"daily_loss_limit": None}, headers={"X-CSRFToken": token}).json
    assert cleared["daily_loss_limit"] is None and cleared["max_open_positions"] == 3
    assert client.put("/api/v1/risk", json={"daily_loss_limit": "1"}).status_code == 400  # no CSRF token


def test_a_second_halt_is_refused_by_the_database_and_a_start_that_raced_the_halt_is_stopped(app, client, redis_conn):
    """Two watchers reaching the same verdict: the DayHalt is unique per user and day, so one acts. A START
    that committed after the halt's sweep (it outwaited the user's lock) is stopped by the next round."""
    headers = trader(client, "raced@example.com")
    sid = api_strategy(client, headers, buy_time="11:00", sell_time="15:00")
    start(client, headers, sid)
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "raced@example.com"))
        pnl = risk.DayPnl(user.id, risk.trading_day(clock.now()), Decimal("100"), realised=Decimal("-150"))
        db.session.get(Strategy, sid).stop_requested_at = clock.now()  # as if the first halt's sweep had it
        db.session.commit()
        assert risk.halt(pnl, clock.now(), redis_conn) is not None
        assert risk.halt(pnl, clock.now(), redis_conn) is None  # the second watcher
        assert len(db.session.scalars(select(AuditEvent).where(AuditEvent.action == "daily_loss_limit_hit")).all()) == 1
        assert Queue("stoploss", connection=redis_conn).count == 0  # a STOP was asked for already: none again

    late = api_strategy(client, headers, buy_time="11:00", sell_time="15:00")
    with app.app_context():  # a START that raced the halt: its run committed after the halt's sweep
        strategy = db.session.get(Strategy, late)
        run = Run(strategy_id=late, run_date=risk.trading_day(clock.now()))
        db.session.add(run)
        db.session.flush()
        strategy.status, strategy.run_id, strategy.run_date = "waiting_entry", run.id, run.run_date
        db.session.commit()
    with app.app_context():
        assert risk.check(clock.now(), redis_conn) == []  # nobody newly halted, but the late run is swept
        strategy = db.session.get(Strategy, late)
        assert strategy.stop_requested_at is not None
    jobs = Queue("stoploss", connection=redis_conn).jobs
    assert [e["event_id"] for job in jobs for e in job.args[0]] == [f"{late}:STOP:{strategy.run_id}"]
    assert jobs[0].args[0][0]["reason"].startswith("Daily loss limit hit at ")
    with app.app_context():
        risk.check(clock.now(), redis_conn)
    assert Queue("stoploss", connection=redis_conn).count == 1  # once
