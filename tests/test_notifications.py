"""Notifications and Telegram commands (issue 15, parts 1 and 2) through real worker, scheduler, listener and
notifier processes, the paper broker, a local fake of Telegram's Bot API and a local SMTP server (the only
fakes: the network edge)."""
from __future__ import annotations

import re
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.conftest import wait_for
from tests.engine_helpers import csv_feed, orders, seconds_ahead, start, trader, wait_status
from tests.fake_smtp import FakeSMTP
from tests.fake_telegram import FakeTelegram
from tests.helpers import api_strategy
from webapp import redis_client
from webapp.engine import notices
from webapp.extensions import db
from webapp.models import AuditEvent, Notification, NotificationDelivery, Strategy, User
from webapp.services import notifications

pytestmark = pytest.mark.slow

TOKEN = "123456:TEST-TOKEN"
CHAT, STRANGER = 7001, 7002


@pytest.fixture
def telegram():  # type: ignore[no-untyped-def]
    with FakeTelegram(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def smtp():  # type: ignore[no-untyped-def]
    with FakeSMTP() as fake:
        yield fake


@pytest.fixture
def app_overrides(telegram, smtp) -> dict:
    return {"TRADING_CALENDAR": "always", "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_ROOT": telegram.url,
            "SMTP_HOST": smtp.host, "SMTP_PORT": smtp.port, "SMTP_STARTTLS": False}


@pytest.fixture
def notifier(engine, telegram, smtp):  # type: ignore[no-untyped-def]
    """The notifier process beside the worker and scheduler, on the fakes; retries quick for the test."""
    engine.env = {**engine.env, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_ROOT": telegram.url,
                  "TELEGRAM_POLL_SECONDS": "1", "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port),
                  "SMTP_STARTTLS": "false", "NOTIFY_RETRY_MAX_SECONDS": "0.5"}
    engine.start("notifier", "jobs.notifier")
    assert telegram.wait_for_poll(timeout=45), "the notifier never polled Telegram"
    return engine


def link(app, telegram, user_email: str, chat_id: int) -> None:  # type: ignore[no-untyped-def]
    """As a user does: a code from the Notifications page's service, sent to the bot from their chat."""
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == user_email))
        code = notifications.link_code(redis_client.current(), user.id)
        db.session.remove()
    telegram.user_says(chat_id, f"/start {code}")
    assert telegram.wait_for_sent(1, chat_id=chat_id), "the bot did not answer the link code"
    assert telegram.sent(chat_id)[-1]["text"].startswith(f"Linked to {user_email}")


def choose(app, email: str, telegram_kinds: set[str], email_kinds: set[str]) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        notifications.save_kinds(user.id, telegram_kinds, email_kinds)
        db.session.remove()


def breach(engine, tmp_path, client, headers, sid: int) -> None:  # type: ignore[no-untyped-def]
    entry = Decimal(next(o["price"] for o in orders(client, headers, sid) if o["event"] == "BUY"))
    rows = [(0.3, "INFY", float(entry)), (0.6, "INFY", float(entry - 12))]
    engine.env = {**engine.env, "FEED": csv_feed(tmp_path, "breach", rows)}
    engine.start("listener", "jobs.listener")
    wait_status(client, headers, sid, "stopped_loss")


def test_a_fill_and_a_stop_loss_are_told_once_on_each_opted_in_channel_and_nowhere_else(
        app, client, notifier, telegram, smtp, tmp_path):
    headers = trader(client, "alerts@example.com")
    link(app, telegram, "alerts@example.com", CHAT)
    choose(app, "alerts@example.com", {notices.ENTRY_FILLED, notices.STOPLOSS_HIT}, {notices.STOPLOSS_HIT})
    trader(client, "quiet@example.com")  # opted into nothing: told nothing
    sid = api_strategy(client, headers, name="Alerted INFY", buy_time=seconds_ahead(1), sell_time=seconds_ahead(300),
                       stop_loss_type="points", stop_loss="10")
    start(client, headers, sid)
    wait_status(client, headers, sid, "in_position")

    assert telegram.wait_for_sent(2, chat_id=CHAT), telegram.sent(CHAT)
    entry = next(o for o in orders(client, headers, sid) if o["event"] == "BUY")
    told = telegram.sent(CHAT)[-1]["text"]
    assert told.startswith(f"Bought 10 INFY @ ₹{Decimal(entry['price']):,.2f}: “Alerted INFY” (NSE:INFY).")
    assert "Watching stop-loss" in told

    breach(notifier, tmp_path, client, headers, sid)
    assert telegram.wait_for_sent(3, chat_id=CHAT) and smtp.wait_for(1)
    stop_text = telegram.sent(CHAT)[-1]["text"]
    assert stop_text.startswith("Stop-loss hit: “Alerted INFY” (NSE:INFY) sold 10 INFY @ ₹") and "P&L −₹" in stop_text
    mail = smtp.messages[0]
    assert mail["Subject"] == "Algo: Stop-loss hit: Alerted INFY" and mail.envelope_to == ["alerts@example.com"]
    assert mail.get_content().strip() == stop_text

    # Exactly once each: nothing more comes (the notifier has dispatched every notification by then).
    with app.app_context():
        wait_for(lambda: db.session.scalar(select(db.func.count()).select_from(Notification).where(
            Notification.dispatched_at.is_(None))) == 0, what="every notification dispatched")
        kinds = [n.kind for n in db.session.scalars(select(Notification).order_by(Notification.id))]
        db.session.remove()
    assert kinds == [notices.ENTRY_FILLED, notices.STOPLOSS_HIT]
    assert len(telegram.sent(CHAT)) == 3 and len(smtp.messages) == 1  # link answer + two alerts; one email
    assert [m["chat_id"] for m in telegram.sent()] == [CHAT] * 3  # the quiet trader got nothing


def test_a_channel_answering_500_is_retried_and_never_holds_up_an_order(app, client, notifier, telegram, smtp,
                                                                         tmp_path):
    headers = trader(client, "retry@example.com")
    link(app, telegram, "retry@example.com", CHAT)
    choose(app, "retry@example.com", {notices.ENTRY_FILLED, notices.STOPLOSS_HIT}, set())
    telegram.fail_next("sendMessage", times=3, status=500)
    sid = api_strategy(client, headers, name="Retried", buy_time=seconds_ahead(1), sell_time=seconds_ahead(300),
                       stop_loss_type="points", stop_loss="10")
    start(client, headers, sid)
    wait_status(client, headers, sid, "in_position")
    # The exit goes out on its tick while Telegram is still refusing the entry's message.
    breach(notifier, tmp_path, client, headers, sid)
    assert [o["event"] for o in orders(client, headers, sid) if o["status"] == "COMPLETE"] == ["BUY", "STOPLOSS"]
    assert telegram.wait_for_sent(3, chat_id=CHAT, timeout=20)  # link answer, then both alerts once Telegram is back
    texts = [m["text"] for m in telegram.sent(CHAT)[1:]]
    assert texts[0].startswith("Bought 10 INFY") and texts[1].startswith("Stop-loss hit")
    def deliveries() -> list[tuple[str, int]]:
        with app.app_context():
            try:
                return [(d.status, d.attempts) for d in db.session.scalars(select(NotificationDelivery))]
            finally:
                db.session.remove()

    wait_for(lambda: [status for status, _ in deliveries()] == ["sent", "sent"], what="both recorded as sent")
    assert sum(attempts for _, attempts in deliveries()) == 2 + 3  # the three 500s were tried again
    assert telegram.calls("sendMessage") == 1 + 2 + 3


def test_exitall_from_the_linked_chat_squares_off_after_confirmation_and_from_another_chat_does_nothing(
        app, client, notifier, telegram, tmp_path):
    headers = trader(client, "exitall@example.com")
    link(app, telegram, "exitall@example.com", CHAT)
    choose(app, "exitall@example.com", set(), set())  # only the commands' answers in this chat
    sid = api_strategy(client, headers, name="Held", buy_time=seconds_ahead(1), sell_time=seconds_ahead(300))
    start(client, headers, sid)
    wait_status(client, headers, sid, "in_position")

    telegram.user_says(STRANGER, "/exitall")
    assert telegram.wait_for_sent(1, chat_id=STRANGER)
    assert "not linked" in telegram.sent(STRANGER)[0]["text"]
    telegram.user_says(STRANGER, "/confirm 0000")
    assert telegram.wait_for_sent(2, chat_id=STRANGER)
    assert wait_status(client, headers, sid, "in_position")["position"] == 10  # nothing done for a stranger

    telegram.user_says(CHAT, "/status")
    assert telegram.wait_for_sent(2, chat_id=CHAT)
    assert f"#{sid} Held (INFY): In position, 10 held" in telegram.sent(CHAT)[-1]["text"]
    telegram.user_says(CHAT, "/exitall")
    assert telegram.wait_for_sent(3, chat_id=CHAT)
    asked = telegram.sent(CHAT)[-1]["text"]
    assert "squares off 1 position at market" in asked
    assert wait_status(client, headers, sid, "in_position")["position"] == 10  # not before the confirmation
    code = re.search(r"/confirm (\d{4})", asked).group(1)
    telegram.user_says(CHAT, f"/confirm {code}")
    assert telegram.wait_for_sent(4, chat_id=CHAT)
    assert telegram.sent(CHAT)[-1]["text"].startswith("Held: Stopping: selling 10 INFY at market first.")
    assert wait_status(client, headers, sid, "stopped")["position"] == 0
    assert [o["event"] for o in orders(client, headers, sid)] == ["BUY", "STOP"]
    with app.app_context():
        audited = [e.detail["command"] for e in db.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "telegram_command"))]
        db.session.remove()
    assert audited == ["/exitall"]


# ---------------------------------------------------------------------------------------------------------
# The service alone (no processes): who gets what, wording, rate, the morning reminder


def _user(app, email: str) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        user = User(email=email)
        user.set_password("x" * 12)
        db.session.add(user)
        db.session.commit()
        return user.id


def test_a_notification_goes_only_to_the_channels_its_kind_was_chosen_for(app):
    uid = _user(app, "chooser@example.com")
    with app.app_context():
        notifications.save_kinds(uid, {notices.ORDER_FAILED}, {notices.ORDER_FAILED, notices.DAY_SKIPPED})
        for kind in (notices.ORDER_FAILED, notices.DAY_SKIPPED, notices.ENTRY_FILLED):
            db.session.add(Notification(**notices.row(kind, uid, reason="r")))
        db.session.commit()
        notifications.dispatch_new(app.config)
        made = sorted((n.kind, d.channel) for d in db.session.scalars(select(NotificationDelivery))
                      for n in [db.session.get(Notification, d.notification_id)])
        # Telegram is chosen but not linked: nothing can go there.
        assert made == [(notices.DAY_SKIPPED, "email"), (notices.ORDER_FAILED, "email")]
        assert notifications.dispatch_new(app.config) == 0  # each notification dispatched once


def test_a_user_over_the_rate_waits_their_turn():
    limit = notifications.RateLimit(per_minute=2)
    assert limit.wait(1, "email") == 0
    limit.spend(1, "email")
    limit.spend(1, "email")
    assert 59 < limit.wait(1, "email") <= 60
    assert limit.wait(2, "email") == 0 and limit.wait(1, "telegram") == 0  # per user and channel


def test_the_login_reminder_is_raised_once_a_day_for_kite_accounts_needing_a_login(app):
    from datetime import datetime, timezone

    from webapp.models import BrokerAccount

    uid = _user(app, "morning@example.com")
    config = {**app.config, "BROKER": "kite", "TRADING_CALENDAR": "nse", "LOGIN_REMINDER_TIME": "08:45:00"}
    early = datetime(2026, 11, 26, 3, 0, tzinfo=timezone.utc)  # 08:30 IST, a Thursday
    later = datetime(2026, 11, 26, 3, 20, tzinfo=timezone.utc)  # 08:50 IST
    noon = datetime(2026, 11, 26, 6, 30, tzinfo=timezone.utc)  # 12:00 IST: too late to remind
    with app.app_context():
        db.session.add(BrokerAccount(user_id=uid, broker="kite", api_key_enc=b"x", api_secret_enc=b"x",
                                     access_token_enc=None, api_key_last4="abcd", status="login_required"))
        db.session.add(Strategy(user_id=uid, name="Daily", symbol="INFY", exchange="NSE", quantity=1,
                                buy_time="09:20:00", sell_time="15:00:00", stop_loss=Decimal("1"), deployed=True))
        db.session.commit()
        assert notifications.login_reminders(config, early) == 0
        assert notifications.login_reminders(config, noon) == 0
        assert notifications.login_reminders(config, later) == 1
        assert notifications.login_reminders(config, later) == 0  # once a day
        told = db.session.scalar(select(Notification))
        text = notifications.render(told, "https://algo.example").text
        assert text == ("Log in to Kite before 09:15 IST: your Kite session is not valid today, and these run "
                        "today: Daily. https://algo.example/broker")
        assert notifications.login_reminders({**config, "BROKER": "paper"}, later) == 0  # paper needs no login
