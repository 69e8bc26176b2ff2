"""Recurring deployment (issue 13, part 1): a strategy with weekdays, STARTed once, runs on each of its
weekdays that is a trading day until STOP; each day a run of its own, begun by the deployer in the
scheduler; a day without a broker session, or with the system down at the buy time, is skipped and the
user told. The week is simulated: every process follows CLOCK_OFFSET_FILE (webapp/clock.py), and the test
moves the whole system's clock to a little before each instant instead of waiting for it."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import date, datetime, time as wall, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import wait_for
from tests.engine_helpers import broker_orders, orders, status, trader, wait_status
from tests.helpers import api_strategy, db_update
from webapp import clock, keys
from webapp.engine.events import Event
from webapp.extensions import db
from webapp.market_calendar import exchange_date, instant, is_trading_day, nse_holidays
from webapp.models import AuditEvent, BrokerAccount, OrderLog, Run, Strategy
from webapp.services.status import fills_pnl

BUY_AT, SELL_AT = wall(10, 0, 0), wall(10, 0, 20)
ARM = timedelta(seconds=120)  # RUN_ARM_SECONDS' default
LEAD = timedelta(seconds=1.5)  # how far before an instant the clock is moved: the system crosses it itself
# A real NSE holiday (webapp/data/nse_holidays.txt) on a Friday, its week and the next Monday and Tuesday.
WED, THU, HOLIDAY, SAT, MON, TUE, NEXT_WED = (date(2026, 12, d) for d in (23, 24, 25, 26, 28, 29, 30))


@pytest.fixture
def move_clock(tmp_path: Path, processes) -> Callable[[datetime], None]:  # type: ignore[no-untyped-def]
    """The system's clock, test process and every process `processes` starts, read from one file."""
    path = tmp_path / "clock-offset"
    before = clock.OFFSET
    path.write_text(str(before.total_seconds()))
    clock.follow(path)
    processes.env.update(CLOCK_OFFSET_FILE=str(path), DEPLOY_CHECK_SECONDS="0.3", TRADING_CALENDAR="nse")

    def move(moment: datetime) -> None:
        partial = path.with_suffix(".partial")
        partial.write_text(repr((moment - datetime.now(timezone.utc)).total_seconds()))
        os.replace(partial, path)  # never a half-written file
        wait_for(lambda: abs((clock.now() - moment).total_seconds()) < 1, timeout=2, what="the clock to move")
        time.sleep(2 * clock.FILE_POLL_SECONDS)  # the other processes' followers too

    yield move
    clock.unfollow(before)


def at(day: date, moment: wall, before: timedelta = timedelta(0)) -> datetime:
    return instant(day, moment) - before


def runs(app, sid: int) -> list[Run]:  # type: ignore[no-untyped-def]
    with app.app_context():
        found = list(db.session.scalars(select(Run).where(Run.strategy_id == sid).order_by(Run.id)))
        db.session.expunge_all()
        return found


def runs_on(app, sid: int, day: date) -> list[Run]:  # type: ignore[no-untyped-def]
    return [run for run in runs(app, sid) if run.run_date == day.isoformat()]


def strategy_row(app, sid: int) -> Strategy:  # type: ignore[no-untyped-def]
    with app.app_context():
        row = db.session.get(Strategy, sid)
        db.session.expunge(row)
        return row


def audits(app, sid: int, action: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        found = list(db.session.scalars(select(AuditEvent).where(AuditEvent.strategy_id == sid,
                                                                 AuditEvent.action == action)))
        db.session.expunge_all()
        return found


def run_pnl(app, run: Run) -> Decimal | None:  # type: ignore[no-untyped-def]
    with app.app_context():
        fills = [row for row in db.session.scalars(select(OrderLog).where(OrderLog.event_id.endswith(f":{run.id}")))
                 if row.filled_quantity and row.price is not None]
        return fills_pnl(fills, run.direction, 0, None)[0]


def one_day_run(app, client, headers, sid: int, day: date, move) -> tuple[Run, dict]:  # type: ignore[no-untyped-def]
    """Arm, buy and sell on `day`, the clock moved to a little before each instant."""
    move(at(day, BUY_AT, ARM + LEAD))
    assert runs_on(app, sid, day) == []  # not before its arm instant
    begun = wait_for(lambda: runs_on(app, sid, day), timeout=10, what=f"the deployer to begin {day}'s run")
    assert len(begun) == 1 and begun[0].started_at >= at(day, BUY_AT, ARM)
    assert wait_status(client, headers, sid, "waiting_entry")["status"] == "waiting_entry"
    move(at(day, BUY_AT, LEAD))
    held = wait_status(client, headers, sid, "in_position")
    assert held["position"] == 10
    move(at(day, SELL_AT, LEAD))
    done = wait_status(client, headers, sid, "completed")
    return begun[0], done


def quiet(app, sid: int, day: date, move, *moments: wall) -> None:  # type: ignore[no-untyped-def]
    """The clock passes these instants of `day`; the deployer (several rounds at each) does nothing."""
    for moment in moments:
        move(at(day, moment))
        time.sleep(1.0)
    assert runs_on(app, sid, day) == []


def logged(processes, name: str, event: str, sid: int) -> list[dict]:  # type: ignore[no-untyped-def]
    lines = [json.loads(line) for line in processes.log(name).splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event and line.get("strategy_id") == sid]


@pytest.mark.slow
def test_a_deployed_strategy_runs_on_its_trading_weekdays_and_says_why_a_day_is_skipped(
        app, client, processes, move_clock, redis_conn):
    assert HOLIDAY in nse_holidays() and not is_trading_day(HOLIDAY, "nse") and HOLIDAY.weekday() == 4
    headers = trader(client, "weekly@example.com")
    sid = api_strategy(client, headers, buy_time="10:00:00", sell_time="10:00:20", weekdays="01234")  # Mon–Fri

    move_clock(at(WED - timedelta(days=1), BUY_AT) + timedelta(minutes=5))  # Tue 22 Dec, past its buy time
    processes.start("worker", "jobs.worker")
    for name in ("scheduler", "scheduler2"):  # two schedulers: each day begun (or skipped) once
        processes.start(name, "jobs.scheduler")
    processes.start("listener", "jobs.listener")
    wait_for(lambda: redis_conn.exists(keys.SCHEDULER_HEARTBEAT), timeout=15, what="a scheduler")

    started = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert started.status_code == 200, started.json
    assert started.json["message"] == "Deployed: next run Wed 23 Dec, BUY at 10:00:00 IST."
    assert status(client, headers, sid)["status_reason"] == started.json["message"]
    assert status(client, headers, sid)["status"] == "created"
    assert strategy_row(app, sid).deployed and len(audits(app, sid, "strategy_deployed")) == 1
    time.sleep(1.0)
    assert runs(app, sid) == []  # deployed after Tuesday's buy time: not a missed day

    first, first_status = one_day_run(app, client, headers, sid, WED, move_clock)

    # Thursday: the broker session is gone before the run is armed. Skipped, said, audited, no order.
    db_update(app, BrokerAccount, strategy_row(app, sid).broker_account_id, status="login_required")
    move_clock(at(THU, BUY_AT, ARM + LEAD))
    skipped = wait_for(lambda: runs_on(app, sid, THU), timeout=10, what="Thursday skipped")
    assert [(r.status, r.reason) for r in skipped] == [
        ("skipped", "Skipped Thu 24 Dec: Broker login required before 09:58:00 IST, when the run is armed for its "
                    "BUY at 10:00:00 IST")]
    said = status(client, headers, sid)
    assert said["status_reason"] == skipped[0].reason and said["status"] == "completed"
    assert [a.detail["run_date"] for a in audits(app, sid, "run_skipped")] == [THU.isoformat()]
    assert wait_for(lambda: logged(processes, "scheduler", "run_skipped", sid)
                    + logged(processes, "scheduler2", "run_skipped", sid), what="the skip logged")[0]["reason"] \
        == skipped[0].reason
    assert runs_on(app, sid, WED)[0].status == "completed"  # Wednesday's outcome kept on its own row
    move_clock(at(THU, BUY_AT) + timedelta(seconds=3))
    time.sleep(1.0)
    assert len(orders(client, headers, sid)) == 2 and status(client, headers, sid)["status"] == "completed"
    db_update(app, BrokerAccount, strategy_row(app, sid).broker_account_id, status="connected")

    quiet(app, sid, HOLIDAY, move_clock, (at(HOLIDAY, BUY_AT, ARM) + timedelta(seconds=1)).time(), wall(10, 0, 5))
    quiet(app, sid, SAT, move_clock, wall(10, 0, 5))

    second, second_status = one_day_run(app, client, headers, sid, MON, move_clock)

    # Tuesday: the clock jumps past the buy time with no run begun (the system was down): skipped, said.
    move_clock(at(TUE, BUY_AT) + timedelta(seconds=5))
    missed = wait_for(lambda: runs_on(app, sid, TUE), timeout=10, what="Tuesday skipped as missed")
    assert [(r.status, r.reason) for r in missed] == [
        ("skipped", "Skipped Tue 29 Dec: the system was not running at the buy time 10:00:00 IST")]
    assert status(client, headers, sid)["status_reason"] == missed[0].reason

    stopped = client.post(f"/api/v1/strategy/{sid}/stop", headers=headers)
    assert stopped.status_code == 202 and stopped.json["message"] == "Undeployed: no further runs."
    assert not strategy_row(app, sid).deployed and len(audits(app, sid, "strategy_undeployed")) == 1
    quiet(app, sid, NEXT_WED, move_clock, (at(NEXT_WED, BUY_AT, ARM) + timedelta(seconds=1)).time())

    # One run a trading weekday, none on the holiday or the weekend; each with its own events and P&L.
    assert [(r.run_date, r.status) for r in runs(app, sid)] == [
        (WED.isoformat(), "completed"), (THU.isoformat(), "skipped"), (MON.isoformat(), "completed"),
        (TUE.isoformat(), "skipped")]
    placed = orders(client, headers, sid)
    by_run = {run.id: [o for o in placed if o["event_id"].endswith(f":{run.id}")] for run in (first, second)}
    assert {run: [(o["event"], o["status"]) for o in rows] for run, rows in by_run.items()} == {
        first.id: [("BUY", "COMPLETE"), ("SELL", "COMPLETE")], second.id: [("BUY", "COMPLETE"), ("SELL", "COMPLETE")]}
    assert len({o["event_id"] for o in placed}) == len({o["tag"] for o in placed}) == 4
    for run in (first, second):
        for kind in ("BUY", "SELL"):
            assert broker_orders(redis_conn, Event.for_run(kind, sid, run.id).event_id) == 1
    for run, said in ((first, first_status), (second, second_status)):
        assert said["pnl"] is not None and Decimal(said["pnl"]) == run_pnl(app, run)


def test_start_with_weekdays_begins_today_when_due_and_stop_undeploys(app, client):
    """No processes: START registers the triggers and the worker never needs to act."""
    if not is_trading_day(exchange_date(clock.now()), "nse"):
        pytest.skip("the suite runs on a day NSE is shut")
    headers = trader(client, "today@example.com")
    # The suite's clock is at 10:00 IST (tests/conftest.py): 10:30 is ahead.
    sid = api_strategy(client, headers, buy_time="10:30:00", sell_time="11:00:00", weekdays="01234")
    started = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert started.status_code == 200, started.json
    assert started.json["message"] == ("Deployed (Mon, Tue, Wed, Thu, Fri) until you STOP it. Running today: BUY at "
                                       "10:30:00 IST, SELL at 11:00:00 IST.")
    row = strategy_row(app, sid)
    assert row.deployed and row.status == "waiting_entry" and len(runs(app, sid)) == 1
    again = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert again.json["message"] == "Already running."

    stopped = client.post(f"/api/v1/strategy/{sid}/stop", headers=headers)
    assert stopped.status_code == 202 and stopped.json["message"] == "Stopping. Undeployed: no further runs."
    assert not strategy_row(app, sid).deployed


def test_a_one_day_start_is_unchanged_and_weekdays_that_never_trade_are_refused(app, client):
    if not is_trading_day(exchange_date(clock.now()), "nse"):
        pytest.skip("the suite runs on a day NSE is shut")
    headers = trader(client, "oneday@example.com")
    sid = api_strategy(client, headers, buy_time="10:30:00", sell_time="11:00:00")
    started = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert started.json["message"] == "Running: BUY at 10:30:00 IST, SELL at 11:00:00 IST."
    row = strategy_row(app, sid)
    assert not row.deployed and row.status == "waiting_entry"
    assert audits(app, sid, "strategy_deployed") == []

    weekend = api_strategy(client, headers, buy_time="10:30:00", sell_time="11:00:00")
    db_update(app, Strategy, weekend, weekdays="56")  # the form refuses these; the model does not
    refused = client.post(f"/api/v1/strategy/{weekend}/start", headers=headers)
    assert refused.status_code == 409
    assert refused.json["message"] == "None of its weekdays (Sat, Sun) is a trading day: it would never run."
    assert not strategy_row(app, weekend).deployed

    not_running = client.post(f"/api/v1/strategy/{weekend}/stop", headers=headers)
    assert not_running.status_code == 409  # neither running nor deployed: as before


@pytest.fixture
def armed(app, monkeypatch):  # type: ignore[no-untyped-def]
    """The test process's clock a moment into a deployed strategy's arm window on Wed 23 Dec 2026."""
    def move(moment: datetime) -> None:
        monkeypatch.setattr(clock, "OFFSET", moment - datetime.now(timezone.utc))
    move(at(WED, BUY_AT, ARM) + timedelta(seconds=1))
    return move


def test_the_deployer_begins_a_day_once_and_the_kill_switch_skips_it(app, client, armed):
    """The deployer's rounds called in this process (no scheduler): once begun, a day is never begun again;
    a kill switch (like any START refusal) skips the day with its reason."""
    from webapp.models import KillSwitch
    from webapp.services import deploy

    headers = trader(client, "rounds@example.com")
    sids = [api_strategy(client, headers, buy_time="10:00:00", sell_time="10:00:20", weekdays="2")
            for _ in range(2)]
    with app.app_context():
        for sid in sids:
            db.session.get(Strategy, sid).deployed = True
        db.session.commit()
    with app.app_context():
        first = deploy.deploy_round()
        again = deploy.deploy_round()
    assert sorted(first.begun) == sids and again.begun == again.skipped == []
    assert [len(runs_on(app, sid, WED)) for sid in sids] == [1, 1]
    assert strategy_row(app, sids[0]).status == "waiting_entry"

    other = trader(client, "halted@example.com")
    halted = api_strategy(client, other, buy_time="10:00:00", sell_time="10:00:20", weekdays="2")
    with app.app_context():
        db.session.get(Strategy, halted).deployed = True
        user_id = db.session.get(Strategy, halted).user_id
        db.session.add(KillSwitch(user_id=user_id, reason="broker incident"))
        db.session.commit()
        report = deploy.deploy_round()
    assert report.skipped == [halted]
    assert [(r.status, r.reason) for r in runs(app, halted)] == [
        ("skipped", "Skipped Wed 23 Dec: Trading is halted by the admin: broker incident")]
    assert strategy_row(app, halted).status_reason == runs(app, halted)[0].reason
    assert [a.severity for a in audits(app, halted, "run_skipped")] == ["warning"]

    armed(at(WED, BUY_AT) + timedelta(seconds=1))  # past the buy time: nothing more for anyone today
    with app.app_context():
        late = deploy.deploy_round()
    assert late.begun == late.skipped == []


def test_a_trigger_another_scheduler_moved_is_not_taken_from_the_cache_for_the_next_run(app, monkeypatch):
    """Every run of a strategy registers its BUY under the same job id: a scheduler that prefetched run 1's
    BUY, moved by the other scheduler, must move run 2's BUY next day, not run 1's payload again."""
    from jobs.scheduler import Mover
    from webapp import redis_client
    from webapp.engine import schedule
    from webapp.engine.events import BUY

    def to(moment: datetime) -> None:
        monkeypatch.setattr(clock, "OFFSET", moment - datetime.now(timezone.utc))

    with app.app_context():
        conn = redis_client.current()
        first = (clock.now() + timedelta(seconds=5)).replace(microsecond=0)
        schedule.register(conn, Event.for_run(BUY, 7, 1, first), first)
        ours, theirs = Mover(conn), Mover(conn)
        ours.prefetch(first.timestamp())
        to(first + timedelta(milliseconds=5))
        assert theirs.move_due() == ["7:BUY:1"]
        assert ours.move_due() == []
        following = first + timedelta(days=1)
        schedule.register(conn, Event.for_run(BUY, 7, 2, following), following)
        to(following + timedelta(milliseconds=5))
        assert ours.move_due() == ["7:BUY:2"]


def test_next_run_names_the_next_trading_weekday(app, armed):
    """deploy.next_run (for pages and the status API): today's buy while it is ahead and today has no run,
    else the next of its weekdays the calendar trades, holidays skipped."""
    from webapp.services import deploy

    strategy = Strategy(buy_time="10:00:00", weekdays="034", deployed=True)  # Mon, Thu, Fri
    with app.app_context():
        assert deploy.describe_weekdays(strategy.weekdays) == "Mon, Thu, Fri"
        # Wed 23 Dec, armed: Thursday is next; Friday 25 Dec is a holiday, so Monday after it.
        assert deploy.next_run(strategy) == at(THU, BUY_AT)
        assert deploy.next_run(strategy, at(THU, BUY_AT) + timedelta(seconds=1)) == at(MON, BUY_AT)
        strategy.deployed = False
        assert deploy.next_run(strategy) is None
