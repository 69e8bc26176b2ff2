"""Recurring deployment (issue 13): a strategy with weekdays, once STARTed, is deployed and runs on each of
its weekdays that is a trading day, until STOP. Each day is a new run, begun by the deployer in the
scheduler process (jobs/scheduler.py, a thread of its own) through the same lifecycle.begin_run as START.

Every DEPLOY_CHECK_SECONDS the deployer looks for deployed strategies whose weekday today is, on a trading
day, with no run today, whose arm instant (buy_time - RUN_ARM_SECONDS) has come. Under the strategy's
runtime lock (START's), after reading it again, it:
- begins today's run, when lifecycle.start_refusal() has no objection (the broker session, the kill
  switch, a flagged position, ... the one hook both paths ask);
- otherwise skips the day: a Run row with status "skipped" and the reason, the strategy's status_reason
  ("Skipped Wed 25 Nov: ..."), an AuditEvent "run_skipped" and a JSON log line. Never a silent miss;
- past the buy time with no run (the system was down through the arm window): skips the day too, unless
  the strategy was deployed after the window opened (nothing was due then).
"Has a run today" is asked under the lock, and a run's row is committed with the strategy's new state, so
two schedulers, or one restarted, never begin or skip a day twice."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import redis
from flask import current_app
from sqlalchemy import exists, func, select

from webapp import clock, live, redis_client
from webapp.extensions import db
from webapp.market_calendar import IST, exchange_date, instant, is_trading_day, parse_time
from webapp.engine import notices
from webapp.models import AuditEvent, Notification, Run, Strategy
from webapp.services import lifecycle
from webapp.state_machine import is_running

log = logging.getLogger("services.deploy")

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
SKIPPED = "skipped"
NOT_RUNNING = "the system was not running at the buy time {buy} IST"


def describe_weekdays(weekdays: str | None) -> str:
    """"0134" → "Mon, Tue, Thu, Fri"."""
    return ", ".join(DAY_NAMES[int(d)] for d in sorted(set(weekdays or "")) if d.isdigit() and int(d) < 7)


def runs_on(strategy: Strategy, day: date, calendar: str) -> bool:
    """One of the strategy's weekdays, and a trading day."""
    return bool(strategy.weekdays) and str(day.weekday()) in strategy.weekdays and is_trading_day(day, calendar)


def next_run_day(strategy: Strategy, first: date, calendar: str) -> date | None:
    """The first day from `first` on which the strategy runs; None if none within a year (its weekdays are
    all weekend days on the NSE calendar)."""
    for n in range(366):
        day = first + timedelta(days=n)
        if runs_on(strategy, day, calendar):
            return day
    return None


def next_run(strategy: Strategy, now: datetime | None = None) -> datetime | None:
    """The buy instant of the deployed strategy's next run (today's while its buy time is ahead and no run
    of today has been begun or skipped); None when not deployed. For pages and the status API."""
    if not strategy.deployed:
        return None
    now = now or clock.now()
    today = exchange_date(now)
    calendar = current_app.config["TRADING_CALENDAR"]
    first = today
    if now >= instant(today, parse_time(strategy.buy_time)) or _has_run(strategy.id, today):
        first = today + timedelta(days=1)
    day = next_run_day(strategy, first, calendar)
    return None if day is None else instant(day, parse_time(strategy.buy_time))


def _has_run(strategy_id: int, day: date) -> bool:
    return db.session.scalar(select(exists().where(Run.strategy_id == strategy_id,
                                                   Run.run_date == day.isoformat()))) or False


@dataclass
class Report:
    begun: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)  # locked by START, the engine or another deployer: next round


def deploy_round() -> Report:
    """One round of the deployer (see the module's doc). A quiet round is one query."""
    report = Report()
    now = clock.now()
    today = exchange_date(now)
    if not is_trading_day(today, current_app.config["TRADING_CALENDAR"]):
        return report
    arm = timedelta(seconds=current_app.config["RUN_ARM_SECONDS"])
    ran_today = exists().where(Run.strategy_id == Strategy.id, Run.run_date == today.isoformat())
    query = select(Strategy).where(Strategy.deployed.is_(True), Strategy.weekdays.contains(str(today.weekday())),
                                   ~ran_today)
    armed_until = (now + arm).astimezone(IST)
    if armed_until.date() == today:  # buy times are HH:MM:SS strings: the ones armed by now sort before this
        query = query.where(Strategy.buy_time <= armed_until.strftime("%H:%M:%S"))
    candidates = db.session.scalars(query)
    due = [s for s in candidates if now >= instant(today, parse_time(s.buy_time)) - arm]
    if not due:
        return report
    conn = redis_client.current()
    for strategy in due:
        ids = {"strategy_id": strategy.id, "user_id": strategy.user_id}
        try:
            with lifecycle.run_lock(conn, strategy, blocking=False) as held:
                if not held:
                    report.busy.append(strategy.id)
                    continue
                _arm(conn, strategy, today, report)
        except (redis.ConnectionError, redis.TimeoutError):
            db.session.rollback()
            raise  # Redis is down for every strategy: the round is over (the scheduler logs it once)
        except Exception:  # noqa: BLE001 — one strategy's trouble must not hold up the others' runs
            db.session.rollback()
            log.exception("deploying a strategy failed", extra={"event": "deploy_failed", **ids})
    if report.begun or report.skipped:
        log.info("deployer acted", extra={"event": "deploy_round", "begun": report.begun, "skipped": report.skipped,
                                          "busy": report.busy})
    return report


def _arm(conn: redis.Redis, strategy: Strategy, today: date, report: Report) -> None:
    """Under the strategy's lock: begin today's run, skip the day, or (no longer due) nothing."""
    db.session.refresh(strategy)
    now = clock.now()
    buy_at = instant(today, parse_time(strategy.buy_time))
    arm_at = buy_at - timedelta(seconds=current_app.config["RUN_ARM_SECONDS"])
    if (not strategy.deployed or exchange_date(now) != today or now < arm_at
            or not runs_on(strategy, today, current_app.config["TRADING_CALENDAR"]) or _has_run(strategy.id, today)):
        return  # undeployed, edited, or begun by another scheduler since the candidates were read
    if is_running(strategy.status):
        # An earlier day's run has not ended (a position the engine still works on): today cannot begin.
        skip_day(strategy, today, f"the run of {strategy.run_date} had not finished")
        report.skipped.append(strategy.id)
        return
    if now >= buy_at:
        if _deployed_at(strategy) >= arm_at:
            return  # deployed after today's run was due to begin: today was never one of its runs
        skip_day(strategy, today, NOT_RUNNING.format(buy=strategy.buy_time))
        report.skipped.append(strategy.id)
        return
    refusal = lifecycle.start_refusal(strategy)
    if refusal:
        if refusal == lifecycle.LOGIN_REQUIRED:
            who = "Kite" if current_app.config["BROKER"] == "kite" else "Broker"
            refusal = (f"{who} login required before {_ist(arm_at)} IST, when the run is armed for its BUY at "
                       f"{strategy.buy_time} IST")
        skip_day(strategy, today, refusal)
        report.skipped.append(strategy.id)
        return
    try:
        lifecycle.begin_run(conn, strategy, today, source="deploy_run")
    except lifecycle.StartRefused as exc:  # the kill switch engaged while it began: stopped at once
        log.warning("deployed run stopped as it began", extra={"event": "deploy_run", "strategy_id": strategy.id,
                                                                "user_id": strategy.user_id, "reason": str(exc)})
    report.begun.append(strategy.id)


def _ist(moment: datetime) -> str:
    return moment.astimezone(IST).strftime("%H:%M:%S")


def _deployed_at(strategy: Strategy) -> datetime:
    """When the strategy was last deployed (its audit event); long ago if it predates them."""
    at = db.session.scalar(select(func.max(AuditEvent.created_at)).where(
        AuditEvent.strategy_id == strategy.id, AuditEvent.action == "strategy_deployed"))
    return at or datetime.min.replace(tzinfo=clock.now().tzinfo)


def skip_day(strategy: Strategy, day: date, why: str) -> Run:
    """The day is not run, and the user is told: a skipped Run row with the reason, the strategy's
    status_reason (unless a run is still on: the engine owns a running strategy's columns), an audit event
    and a log line. The last run's outcome is written to its row first (lifecycle.close_run), as a new run
    would."""
    reason = f"Skipped {day:%a %d %b}: {why}"[:255]
    running = is_running(strategy.status)
    if not running:
        lifecycle.close_run(strategy)
        strategy.status_reason = reason
    run = Run(strategy_id=strategy.id, run_date=day.isoformat(), direction=strategy.direction, status=SKIPPED,
              reason=reason)
    db.session.add(run)
    db.session.add(AuditEvent(actor_user_id=None, subject_user_id=strategy.user_id, strategy_id=strategy.id,
                              action="run_skipped", severity="warning",
                              detail={"run_date": day.isoformat(), "reason": reason}))
    db.session.add(Notification(**notices.row(notices.DAY_SKIPPED, strategy.user_id, strategy.id,
                                              run_date=day.isoformat(), reason=reason)))
    db.session.commit()
    log.warning("run skipped", extra={"event": "run_skipped", "strategy_id": strategy.id, "user_id": strategy.user_id,
                                      "run_id": run.id, "run_date": day.isoformat(), "reason": reason})
    if not running:
        live.notify([strategy])
    return run
