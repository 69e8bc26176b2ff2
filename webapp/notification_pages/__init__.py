"""The Notifications settings page: which kinds go to Telegram and to email, linking a Telegram chat with a
one-time code, and the latest notifications with how each channel went."""
from __future__ import annotations

from flask import Blueprint, current_app, flash, render_template, request, url_for
from flask_login import current_user, login_required

from webapp import redis_client
from webapp.engine.notices import KINDS
from webapp.http import go_to
from webapp.services import notifications

bp = Blueprint("notifications", __name__, url_prefix="/settings/notifications")


@bp.after_request
def _not_cached(response):  # type: ignore[no-untyped-def]
    response.headers["Cache-Control"] = "no-store"  # a Telegram link code is on the page
    return response


def _page(code: str | None = None):  # type: ignore[no-untyped-def]
    settings = notifications.settings_for(current_user.id)
    return render_template(
        "notifications/index.html", kinds=KINDS, labels=notifications.LABELS,
        channels=notifications.channels(current_app.config), settings=settings,
        chosen={channel: notifications.kinds_of(settings, channel)
                for channel in (notifications.TELEGRAM, notifications.EMAIL)},
        recent=notifications.recent(current_user.id), code=code, link_minutes=notifications.LINK_SECONDS // 60,
        bot=current_app.config.get("TELEGRAM_BOT_USERNAME"))


@bp.get("")
@login_required
def index():  # type: ignore[no-untyped-def]
    return _page()


@bp.post("")
@login_required
def save():  # type: ignore[no-untyped-def]
    chosen = {channel: {kind for kind in request.form.getlist(channel) if kind in KINDS}
              for channel in (notifications.TELEGRAM, notifications.EMAIL)}
    notifications.save_kinds(current_user.id, chosen[notifications.TELEGRAM], chosen[notifications.EMAIL])
    flash("Notification choices saved.", "success")
    return go_to(url_for("notifications.index"))


@bp.post("/telegram/link")
@login_required
def link():  # type: ignore[no-untyped-def]
    return _page(code=notifications.link_code(redis_client.current(), current_user.id))


@bp.post("/telegram/unlink")
@login_required
def unlink():  # type: ignore[no-untyped-def]
    notifications.unlink(current_user.id)
    flash("Telegram unlinked: nothing more is sent to that chat, and it can no longer command.", "success")
    return go_to(url_for("notifications.index"))
