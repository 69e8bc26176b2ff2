"""Notifications: each user's channels and the kinds they opted into, the Telegram link, the wording of every
kind, and the queue the notifier process works through. The engine and the services only write
`notifications` rows (webapp/engine/notices.py) with the change they describe; turning them into messages
and sending them happens here, in the notifier's process, so a slow or failing channel never touches an
order."""
from __future__ import annotations

import collections
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import redis
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from webapp import clock, keys
from webapp.engine import exits, notices
from webapp.engine.notices import KINDS
from webapp.extensions import db
from webapp.market_calendar import IST, exchange_date, format_time, is_trading_day, parse_time, session_for
from webapp.models import (AuditEvent, BrokerAccount, Notification, NotificationDelivery, NotificationSettings,
                           OrderLog, Strategy, User)
from webapp.money import inr, percent
from webapp.services.status import fills_pnl

log = logging.getLogger("notifications")

TELEGRAM, EMAIL = "telegram", "email"
LABELS = {
    notices.ENTRY_FILLED: "Entry filled",
    notices.EXIT_FILLED: "Exit filled, with the run's P&L",
    notices.STOPLOSS_HIT: "Stop-loss hit",
    notices.TARGET_HIT: "Target hit",
    notices.ORDER_FAILED: "Order rejected or failed, with the broker's reason",
    notices.POSITION_AT_RISK: "Position at risk (needs you)",
    notices.LOGIN_REMINDER: "Morning reminder to log in to Kite",
    notices.DAY_SKIPPED: "A day skipped",
    notices.KILL_SWITCH: "Kill switch engaged for you",
}
LINK_SECONDS = 600  # a Telegram link code's life
LINK_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to misread: 10 of them are 50 bits
LINK_LENGTH = 10
LINK_TRIES = 5  # wrong codes a chat may send in LINK_SECONDS (whoever links a chat can /exitall from it)
REMINDER_WINDOW = timedelta(hours=2)  # the morning reminder goes out this long after LOGIN_REMINDER_TIME at most
CLAIM_SECONDS = 60  # a delivery being sent is not picked again before this (a notifier that died mid-send)


class LinkRefused(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------
# Channels and settings


def channels(config: dict) -> list[str]:
    """The channels this installation can send on: the operator configured a bot, an SMTP relay."""
    return [name for name, ready in ((TELEGRAM, config["TELEGRAM_BOT_TOKEN"]), (EMAIL, config["SMTP_HOST"]))
            if ready]


def settings_for(user_id: int) -> NotificationSettings:
    """The user's settings (a fresh, unsaved row with nothing opted into when they never saved any)."""
    return db.session.get(NotificationSettings, user_id) or NotificationSettings(
        user_id=user_id, telegram_kinds="", email_kinds="")


def kinds_of(settings: NotificationSettings, channel: str) -> set[str]:
    text = settings.telegram_kinds if channel == TELEGRAM else settings.email_kinds
    return {kind for kind in (text or "").split(",") if kind in KINDS}


def save_kinds(user_id: int, telegram: set[str], email: set[str]) -> NotificationSettings:
    unknown = (telegram | email) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown notification kinds: {sorted(unknown)}")
    settings = db.session.merge(settings_for(user_id))
    settings.telegram_kinds = ",".join(kind for kind in KINDS if kind in telegram)
    settings.email_kinds = ",".join(kind for kind in KINDS if kind in email)
    db.session.commit()
    return settings


def link_code(conn: redis.Redis, user_id: int) -> str:
    """A one-time code the user sends the bot (as /start CODE) within LINK_SECONDS to link their chat."""
    code = "".join(secrets.choice(LINK_ALPHABET) for _ in range(LINK_LENGTH))
    conn.set(keys.telegram_link(code), user_id, ex=LINK_SECONDS)
    return code


def link_chat(conn: redis.Redis, code: str, chat_id: int) -> User:
    """Links the chat to the code's user (once: the code is consumed). A chat linked to another user before
    is moved, so one chat never reaches two accounts. A chat gets LINK_TRIES wrong codes in LINK_SECONDS."""
    tries = keys.telegram_link_tries(chat_id)
    if int(conn.get(tries) or 0) >= LINK_TRIES:
        raise LinkRefused("Too many wrong codes from this chat: try again in 10 minutes.")
    user_id = conn.getdel(keys.telegram_link(code.strip().upper()))
    user = db.session.get(User, int(user_id)) if user_id else None
    if user is None or user.disabled:
        pipe = conn.pipeline()
        pipe.incr(tries)
        pipe.expire(tries, LINK_SECONDS)
        pipe.execute()
        raise LinkRefused("That code is not valid (codes last 10 minutes and work once).")
    db.session.execute(update(NotificationSettings).where(NotificationSettings.telegram_chat_id == chat_id,
                                                          NotificationSettings.user_id != user.id)
                       .values(telegram_chat_id=None, telegram_linked_at=None))
    settings = db.session.merge(settings_for(user.id))
    settings.telegram_chat_id, settings.telegram_linked_at = chat_id, clock.now()
    if not settings.telegram_kinds:  # linking is the opt-in: every kind, until the user unticks some
        settings.telegram_kinds = ",".join(KINDS)
    db.session.add(AuditEvent(actor_user_id=user.id, subject_user_id=user.id, action="telegram_linked",
                              detail={"chat_id": chat_id}))
    db.session.commit()
    return user


def unlink(user_id: int) -> None:
    settings = db.session.get(NotificationSettings, user_id)
    if settings is not None and settings.telegram_chat_id is not None:
        db.session.add(AuditEvent(actor_user_id=user_id, subject_user_id=user_id, action="telegram_unlinked",
                                  detail={"chat_id": settings.telegram_chat_id}))
        settings.telegram_chat_id = settings.telegram_linked_at = None
        db.session.commit()


def user_for_chat(chat_id: int) -> User | None:
    user = db.session.scalar(select(User).join(NotificationSettings, NotificationSettings.user_id == User.id)
                             .where(NotificationSettings.telegram_chat_id == chat_id))
    return None if user is None or user.disabled else user


def recent(user_id: int, limit: int = 20) -> list[tuple[Notification, list[NotificationDelivery]]]:
    """The user's latest notifications with how each channel went (the settings page's list)."""
    rows = list(db.session.scalars(select(Notification).where(Notification.user_id == user_id)
                                   .order_by(Notification.id.desc()).limit(limit)))
    deliveries = collections.defaultdict(list)
    for delivery in db.session.scalars(select(NotificationDelivery).where(
            NotificationDelivery.notification_id.in_([n.id for n in rows]))):
        deliveries[delivery.notification_id].append(delivery)
    return [(n, deliveries[n.id]) for n in rows]


# ---------------------------------------------------------------------------------------------------------
# Wording: one message per kind, the same on every channel


@dataclass
class Message:
    subject: str  # an email's subject; the first line's gist
    text: str


def _run_fills(strategy_id: int, run_id: int | None) -> list[OrderLog]:
    if not run_id:
        return []
    return [row for row in db.session.scalars(select(OrderLog).where(
        OrderLog.strategy_id == strategy_id, OrderLog.event_id.like(f"%:{run_id}")))
        if row.filled_quantity and row.price is not None]


def _average(rows: list[OrderLog]) -> tuple[int, Decimal | None]:
    quantity = sum(row.filled_quantity for row in rows)
    if not quantity:
        return 0, None
    return quantity, (sum(row.price * row.filled_quantity for row in rows) / quantity).quantize(Decimal("0.01"))


def _signed(value: Decimal) -> str:
    return ("+" if value > 0 else "") + inr(value)


def render(notification: Notification, public_url: str) -> Message:
    data = notification.data or {}
    strategy = db.session.get(Strategy, notification.strategy_id) if notification.strategy_id else None
    name = f"“{strategy.name}” ({strategy.exchange}:{strategy.symbol})" if strategy else ""
    kind = notification.kind
    if kind == notices.ENTRY_FILLED and strategy:
        verb = "Sold short" if strategy.direction == exits.SHORT else "Bought"
        asked = f" of {data['asked']}" if data.get("asked") and data["asked"] != data["quantity"] else ""
        levels = [f"stop-loss {inr(Decimal(data['stop']))}"] if data.get("stop") else []
        levels += [f"target {inr(Decimal(data['target']))}"] if data.get("target") else []
        text = (f"{verb} {data['quantity']}{asked} {strategy.symbol} @ {inr(Decimal(data['price']))}: {name}."
                + (f" Watching {', '.join(levels)}." if levels else ""))
        return Message(f"{verb} {data['quantity']} {strategy.symbol}", text)
    if kind in (notices.EXIT_FILLED, notices.STOPLOSS_HIT, notices.TARGET_HIT) and strategy:
        fills = _run_fills(strategy.id, data.get("run"))
        exit_side = exits.exit_side(strategy.direction)
        quantity, price = _average([row for row in fills if row.side == exit_side])
        entered, _ = _average([row for row in fills if row.side != exit_side])
        # Without our exit fills for the whole entry (the broker squared it off) the P&L is not ours to say.
        rupees, pct = fills_pnl(fills, strategy.direction, 0, None) if quantity >= entered > 0 else (None, None)
        verb = "bought back" if strategy.direction == exits.SHORT else "sold"
        what = (f"{verb} {quantity} {strategy.symbol} @ {inr(price)}" if quantity else
                f"position closed ({data.get('reason') or 'no fill of ours'})")
        result = f" P&L {_signed(rupees)}" + (f" ({percent(pct)})" if pct is not None else "") if rupees is not None else ""
        head = {notices.STOPLOSS_HIT: "Stop-loss hit", notices.TARGET_HIT: "Target hit"}.get(kind, "Exit filled")
        reason = f" ({data['reason']})" if kind == notices.EXIT_FILLED and data.get("reason") else ""
        return Message(f"{head}: {strategy.name}", f"{head}: {name} {what}{reason}.{result}.".replace("..", "."))
    if kind == notices.ORDER_FAILED and strategy:
        return Message(f"Order failed: {strategy.name}",
                       f"Order failed: {name}. {data.get('reason', 'no reason given')}. The strategy has stopped.")
    if kind == notices.POSITION_AT_RISK and strategy:
        return Message(f"Position at risk: {strategy.name}",
                       f"⚠ Needs you now: {name}. {data.get('reason', '')}. Check your positions at the broker "
                       f"and square off there if needed: {public_url}/strategies/{strategy.id}")
    if kind == notices.DAY_SKIPPED and strategy:
        return Message(f"Day skipped: {strategy.name}", f"{name}: {data.get('reason', 'skipped')}.")
    if kind == notices.KILL_SWITCH:
        count = data.get("strategies", 0)
        stopped = f" {count} of your running strateg{'y was' if count == 1 else 'ies were'} stopped " \
                  f"(positions squared off at market)." if count else ""
        return Message("Trading halted by the admin",
                       f"Trading is halted by the admin: {data.get('reason', '')}.{stopped} START is refused "
                       f"until the switch is released.")
    if kind == notices.LOGIN_REMINDER:
        names = ", ".join(data.get("strategies", []))
        return Message("Log in to Kite before the market opens",
                       f"Log in to Kite{' before ' + data['first'] + ' IST' if data.get('first') else ''}: your "
                       f"Kite session is not valid today, and these run today: {names}. {public_url}/broker")
    return Message(kind.replace("_", " ").capitalize(), str(data))  # a strategy deleted since


# ---------------------------------------------------------------------------------------------------------
# The queue


def dispatch_new(config: dict, limit: int = 500) -> int:
    """New notifications → one pending delivery for each channel their user opted into (none: nothing to
    send, and that is final). Each row is taken by compare-and-set, so two notifiers never both send it."""
    rows = list(db.session.scalars(select(Notification).where(Notification.dispatched_at.is_(None))
                                   .order_by(Notification.id).limit(limit)))
    if not rows:
        return 0
    ready = channels(config)
    settings = {s.user_id: s for s in db.session.scalars(select(NotificationSettings).where(
        NotificationSettings.user_id.in_({n.user_id for n in rows})))}
    now = clock.now()
    for notification in rows:
        taken = db.session.execute(update(Notification).where(
            Notification.id == notification.id, Notification.dispatched_at.is_(None)).values(dispatched_at=now))
        user_settings = settings.get(notification.user_id)
        if taken.rowcount != 1 or user_settings is None:
            continue
        for channel in ready:
            if notification.kind in kinds_of(user_settings, channel) and (
                    channel != TELEGRAM or user_settings.telegram_chat_id is not None):
                db.session.add(NotificationDelivery(notification_id=notification.id, user_id=notification.user_id,
                                                    channel=channel, status="pending", attempts=0, next_try_at=now))
    db.session.commit()
    return len(rows)


def due(channel: str, limit: int = 50) -> list[NotificationDelivery]:
    return list(db.session.scalars(select(NotificationDelivery).where(
        NotificationDelivery.channel == channel, NotificationDelivery.status == "pending",
        NotificationDelivery.next_try_at <= clock.now()).order_by(NotificationDelivery.id).limit(limit)))


def claim(delivery: NotificationDelivery, max_attempts: int) -> bool:
    """This sender's turn at the delivery (another notifier, or this one after a crash mid-send, waits
    CLAIM_SECONDS): counted as an attempt. One that has had every attempt (its senders died mid-send) is
    failed instead of tried for ever."""
    if delivery.attempts >= max_attempts:
        delivery.status, delivery.error = "failed", (delivery.error or "no answer from the channel")[:500]
        db.session.commit()
        return False
    taken = db.session.execute(update(NotificationDelivery).where(
        NotificationDelivery.id == delivery.id, NotificationDelivery.status == "pending",
        NotificationDelivery.attempts == delivery.attempts).values(
        attempts=delivery.attempts + 1, next_try_at=clock.now() + timedelta(seconds=CLAIM_SECONDS)))
    db.session.commit()
    if taken.rowcount == 1:
        db.session.refresh(delivery)
    return taken.rowcount == 1


def postpone(delivery: NotificationDelivery, until: datetime) -> None:
    """Not an attempt: the user's rate on this channel is spent until then."""
    db.session.execute(update(NotificationDelivery).where(NotificationDelivery.id == delivery.id)
                       .values(next_try_at=until))
    db.session.commit()


def delivered(delivery: NotificationDelivery) -> None:
    delivery.status, delivery.sent_at, delivery.error = "sent", clock.now(), None
    db.session.commit()


def not_delivered(delivery: NotificationDelivery, error: str, retry: bool, retry_after: float | None,
                  config: dict) -> bool:
    """After a failed attempt: tried again later (2, 4, 8 ... s, or what the channel asked) until
    NOTIFY_MAX_ATTEMPTS, then failed for good. Returns whether it will be tried again."""
    again = retry and delivery.attempts < config["NOTIFY_MAX_ATTEMPTS"]
    delivery.error = error[:500]
    if again:
        pause = retry_after if retry_after else min(2.0 ** delivery.attempts, config["NOTIFY_RETRY_MAX_SECONDS"])
        delivery.next_try_at = clock.now() + timedelta(seconds=pause)
    else:
        delivery.status = "failed"
    db.session.commit()
    return again


class RateLimit:
    """At most `per_minute` messages a minute per (user, channel), in this process (one notifier sends)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = max(1, per_minute)
        self.sent: dict[tuple[int, str], collections.deque] = collections.defaultdict(collections.deque)

    def wait(self, user_id: int, channel: str) -> float:
        """Seconds until this user may be sent another message on this channel (0: now)."""
        window = self.sent[(user_id, channel)]
        now = time.monotonic()
        while window and now - window[0] >= 60:
            window.popleft()
        return 0.0 if len(window) < self.per_minute else 60 - (now - window[0])

    def spend(self, user_id: int, channel: str) -> None:
        self.sent[(user_id, channel)].append(time.monotonic())


# ---------------------------------------------------------------------------------------------------------
# The morning reminder


def login_reminders(config: dict, now: datetime | None = None) -> int:
    """At LOGIN_REMINDER_TIME IST on a trading day, each user with a Kite account whose session is not valid
    today is told once (the dedupe key), with the strategies that would run today."""
    now = now or clock.now()
    day = exchange_date(now)
    if config["BROKER"] != "kite" or not is_trading_day(day, config["TRADING_CALENDAR"]):
        return 0
    at = parse_time(config["LOGIN_REMINDER_TIME"])
    local = now.astimezone(IST)
    # Within REMINDER_WINDOW of the reminder time only: a notifier started at 15:00 does not say "log in".
    if not timedelta(0) <= local - local.replace(hour=at.hour, minute=at.minute, second=at.second,
                                                 microsecond=0) < REMINDER_WINDOW:
        return 0
    opens = session_for(config["TRADING_CALENDAR"]).opens
    first = format_time(opens)[:5] if opens > at else None
    stamp = day.isoformat()
    done = set(db.session.scalars(select(Notification.user_id).where(
        Notification.kind == notices.LOGIN_REMINDER, Notification.dedupe.like(f"login:%:{stamp}"))))
    told = 0
    for account in db.session.scalars(select(BrokerAccount).where(BrokerAccount.broker == "kite")):
        if account.user_id in done or not account.needs_login(now) or account.user.disabled:
            continue
        names = [s.name for s in db.session.scalars(select(Strategy).where(
            Strategy.user_id == account.user_id, Strategy.deployed.is_(True)).order_by(Strategy.name))]
        if not names:  # nothing of theirs runs today by itself: no reason to wake them
            continue
        db.session.add(Notification(**notices.row(notices.LOGIN_REMINDER, account.user_id,
                                                  dedupe=f"login:{account.user_id}:{stamp}", strategies=names,
                                                  first=first)))
        try:
            db.session.commit()  # the dedupe key: a second notifier's reminder clashes and is dropped
            told += 1
        except IntegrityError:
            db.session.rollback()
        done.add(account.user_id)
    return told
