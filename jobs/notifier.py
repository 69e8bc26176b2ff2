"""The notifier: its own process, so nothing a channel does (a slow SMTP relay, Telegram answering 500)
ever reaches an order. It reads what the engine and the services wrote to `notifications`:
- the main loop turns new notifications into deliveries on each user's opted-in channels, and raises the
  morning "log in to Kite" reminder;
- one sender thread per configured channel sends due deliveries, at most NOTIFY_PER_MINUTE a minute per user,
  a failure tried again with backoff (webapp/services/notifications.py);
- with a Telegram bot configured, a poller takes the messages sent to the bot (getUpdates long polling) and
  answers them (webapp/services/telegram_commands.py): linking a chat, /status, /pnl, /stop, /exitall."""
from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import redis
from flask import Flask

from jobs.signals import stop_requested
from webapp import clock, create_app, keys, metrics, redis_client
from webapp.channels import ChannelError, mail
from webapp.channels.telegram import TelegramBot
from webapp.extensions import db
from webapp.models import Notification, User
from webapp.services import notifications, telegram_commands
from webapp.services.notifications import TELEGRAM

log = logging.getLogger("notifier")

DISPATCH_SECONDS = 0.25  # how soon a new notification becomes deliveries
SEND_SECONDS = 0.2  # how often a sender looks for due deliveries
REMINDER_CHECK_SECONDS = 30


def _bot(app: Flask) -> TelegramBot:
    return TelegramBot(app.config["TELEGRAM_API_ROOT"], app.config["TELEGRAM_BOT_TOKEN"])


def send_one(app: Flask, bot: TelegramBot | None, delivery) -> None:  # type: ignore[no-untyped-def]
    """One claimed delivery: rendered now (from the database as it is), sent, and its outcome recorded."""
    notification = db.session.get(Notification, delivery.notification_id)
    ids = {"notification_id": delivery.notification_id, "user_id": delivery.user_id, "channel": delivery.channel,
           "strategy_id": notification.strategy_id if notification else None, "attempt": delivery.attempts}
    if notification is None:
        notifications.not_delivered(delivery, "notification deleted", False, None, app.config)
        metrics.inc(metrics.NOTIFICATIONS, delivery.channel, "failed")
        return
    try:
        message = notifications.render(notification, app.config["PUBLIC_URL"])
        if delivery.channel == TELEGRAM:
            chat_id = notifications.settings_for(delivery.user_id).telegram_chat_id
            if chat_id is None:
                raise ChannelError("the user unlinked Telegram", retry=False)
            assert bot is not None
            bot.send_message(chat_id, message.text)
        else:
            user = db.session.get(User, delivery.user_id)
            mail.send(app.config, user.email, f"Algo: {message.subject}", message.text)
    except Exception as exc:  # noqa: BLE001 — a ChannelError says whether to retry; anything else is tried again
        retry, after = (exc.retry, exc.retry_after) if isinstance(exc, ChannelError) else (True, None)
        if not isinstance(exc, ChannelError):
            log.exception("notification failed unexpectedly", extra={**ids, "event": "notification_error"})
        db.session.rollback()
        again = notifications.not_delivered(delivery, str(exc) or repr(exc), retry, after, app.config)
        metrics.inc(metrics.NOTIFICATIONS, delivery.channel, "retry" if again else "failed")
        log.warning("notification not sent" + (", will retry" if again else ", given up"),
                    extra={**ids, "event": "notification_failed", "error": str(exc), "retry": again})
        return
    notifications.delivered(delivery)
    metrics.inc(metrics.NOTIFICATIONS, delivery.channel, "sent")
    log.info("notification sent", extra={**ids, "event": "notification_sent", "kind": notification.kind})


def sending(app: Flask, channel: str, stop: list[bool]) -> None:
    limit = notifications.RateLimit(app.config["NOTIFY_PER_MINUTE"])
    bot = _bot(app) if channel == TELEGRAM else None
    while not stop:
        with app.app_context():
            try:
                for delivery in notifications.due(channel):
                    wait = limit.wait(delivery.user_id, channel)
                    if wait:
                        notifications.postpone(delivery, clock.now() + timedelta(seconds=wait))
                    elif notifications.claim(delivery, app.config["NOTIFY_MAX_ATTEMPTS"]):
                        limit.spend(delivery.user_id, channel)
                        send_one(app, bot, delivery)
            except Exception:  # noqa: BLE001 — e.g. the database down: the next round tries again
                log.exception("send round failed", extra={"event": "notify_round_failed", "channel": channel})
            finally:
                db.session.remove()
        time.sleep(SEND_SECONDS)


def polling(app: Flask, conn: redis.Redis, stop: list[bool]) -> None:
    """Telegram's messages to the bot, each answered once: the offset after an update is stored when it is
    handled (a crash re-reads at most the update in hand; every command is safe to see twice)."""
    bot = _bot(app)
    try:
        bot.http.post(f"{bot.base}/deleteWebhook", timeout=10)  # getUpdates is refused while a webhook is set
    except Exception:  # noqa: BLE001 — only a courtesy: getUpdates says if it matters
        pass
    while not stop:
        try:
            stored = conn.get(keys.TELEGRAM_OFFSET)
            updates = bot.get_updates(int(stored) if stored else None, app.config["TELEGRAM_POLL_SECONDS"])
        except (ChannelError, redis.RedisError) as exc:
            log.warning("telegram updates unavailable", extra={"event": "telegram_poll_failed", "error": str(exc)})
            time.sleep(2)
            continue
        for update in updates:
            try:
                answer(app, conn, bot, update.get("message") or {})
                conn.set(keys.TELEGRAM_OFFSET, int(update["update_id"]) + 1)
            except Exception:  # noqa: BLE001 — this thread is the bot's only ear: it must outlive any update
                log.exception("telegram update not handled", extra={"event": "telegram_update_failed"})
                time.sleep(2)
                break  # read again from the stored offset


def answer(app: Flask, conn: redis.Redis, bot: TelegramBot, message: dict) -> None:
    """One message to the bot, answered. Only a private chat commands: in a group every member could."""
    chat = message.get("chat") or {}
    chat_id, text = chat.get("id"), message.get("text")
    if chat_id is None or not text:
        return
    if chat.get("type") != "private":
        reply = "I only take commands in a private chat with you."
    else:
        with app.app_context():
            try:
                reply = telegram_commands.handle(conn, int(chat_id), text)
            except Exception:  # noqa: BLE001 — the chat hears something, the log has the rest
                log.exception("telegram command failed", extra={"event": "telegram_command_failed"})
                reply = "Something went wrong on our side; nothing was changed by this message."
            finally:
                db.session.remove()
    try:
        bot.send_message(int(chat_id), reply)
    except ChannelError as exc:
        log.warning("telegram reply not sent", extra={"event": "telegram_reply_failed", "error": str(exc)})


def run(app: Flask, conn: redis.Redis, stop: list[bool]) -> None:
    ready = notifications.channels(app.config)
    for channel in ready:
        threading.Thread(target=sending, args=(app, channel, stop), name=f"send-{channel}", daemon=True).start()
    if TELEGRAM in ready:
        threading.Thread(target=polling, args=(app, conn, stop), name="telegram-updates", daemon=True).start()
    log.info("notifier starting", extra={"event": "notifier_start", "channels": ready})
    next_reminder = 0.0
    while not stop:
        with app.app_context():
            try:
                notifications.dispatch_new(app.config)
                if time.monotonic() >= next_reminder:
                    notifications.login_reminders(app.config)
                    next_reminder = time.monotonic() + REMINDER_CHECK_SECONDS
            except Exception:  # noqa: BLE001 — the next round tries again
                log.exception("dispatch round failed", extra={"event": "notify_dispatch_failed"})
            finally:
                db.session.remove()
        try:
            conn.set(keys.NOTIFIER_HEARTBEAT, clock.now().isoformat(), ex=30)
        except redis.RedisError:
            pass
        time.sleep(DISPATCH_SECONDS)


def main() -> None:
    stop = stop_requested()
    app = create_app(process_name="notifier")
    run(app, redis_client.connect(app.config["REDIS_URL"]), stop)
    log.info("notifier stopped", extra={"event": "notifier_stop"})


if __name__ == "__main__":
    main()
