"""Admin pages: kill switch, health, users. Anyone without the admin role gets a plain 404, so the
area does not even announce itself."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, jsonify, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from webapp.api import tokens
from webapp.extensions import csrf, db
from webapp.feeds import session as feed_session
from webapp.http import go_to
from webapp.models import AuditEvent, User, active_kill_switches
from webapp.services import health, kill_switch

bp = Blueprint("admin", __name__, url_prefix="/admin")
MAX_ID = 2**31 - 1  # user ids are the database's INTEGER


@bp.before_request
def _admins_only() -> None:
    """The role is checked before CSRF (the blueprint is CSRF-exempt at app level), so a non-admin's post
    gets the same 404 as a get, not a 400 that would give the route away."""
    if not (current_user.is_authenticated and current_user.is_admin):
        abort(404)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()


@bp.get("")
def index():  # type: ignore[no-untyped-def]
    users = list(db.session.scalars(select(User).order_by(User.id)))
    audit = list(db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(30)))
    return render_template("admin/index.html", users=users, switches=active_kill_switches(), health=health.snapshot(),
                           audit=audit, confirmation=kill_switch.CONFIRMATION, feed_accounts=feed_session.candidates())


@bp.get("/health")
def health_json():  # type: ignore[no-untyped-def]
    return jsonify(health.snapshot())


@bp.post("/kill")
def kill():  # type: ignore[no-untyped-def]
    user_id = _kill_scope(request.form.get("user_id", "").strip())
    if user_id is not None and db.session.get(User, user_id) is None:
        flash("No such user.", "error")
        return go_to(url_for("admin.index"))
    try:
        stopped = kill_switch.engage(current_user, user_id, request.form.get("reason", ""),
                                     request.form.get("confirmation", ""))
    except kill_switch.NotConfirmed as exc:
        flash(f"Kill switch not engaged: {exc}", "error")
    else:
        scope = "everyone" if user_id is None else f"user {user_id}"
        flash(f"Kill switch engaged for {scope}: {stopped} running strategies are being stopped and squared off.",
              "success")
    return go_to(url_for("admin.index"))


def _record_id(raw: str) -> int | None:
    """A row id typed into a form, or None. Only ASCII digits within the database's INTEGER: str.isdigit()
    also passes "²", which int() refuses, and "٣", which int() reads as 3; a larger number fails in the
    query."""
    return int(raw) if raw.isascii() and raw.isdigit() and int(raw) <= MAX_ID else None


def _kill_scope(raw: str) -> int | None:
    """None for everyone, else a user id; anything else is a 400, never a 500."""
    if not raw:
        return None
    user_id = _record_id(raw)
    if user_id is None:
        abort(400, description="The kill switch scope must be a user number, or empty for everyone.")
    return user_id


@bp.post("/kill/<int:switch_id>/release")
def release(switch_id: int):  # type: ignore[no-untyped-def]
    if kill_switch.release(current_user, switch_id) is None:
        abort(404)
    flash("Kill switch released: STARTs are accepted again in its scope.", "success")
    return go_to(url_for("admin.index"))


@bp.post("/feed-account")
def feed_account():  # type: ignore[no-untyped-def]
    """The Kite account whose session the market feed uses ("" for none); the listener picks it up by itself."""
    raw = request.form.get("broker_account_id", "").strip()
    account_id = _record_id(raw)
    if raw and (account_id is None or feed_session.choose(current_user, account_id) is None):
        flash("No such Kite account.", "error")
        return go_to(url_for("admin.index"))
    if not raw:
        feed_session.choose(current_user, None)
    flash("Market-data account saved: the listener switches to it within "
          f"{current_app.config['FEED_SESSION_CHECK_SECONDS']:g} s.", "success")
    return go_to(url_for("admin.index"))


@bp.post("/users/<int:user_id>/<any(disable, enable):action>")
def set_user(user_id: int, action: str):  # type: ignore[no-untyped-def]
    user = db.session.get(User, user_id)
    if user is None or user.id == current_user.id:
        abort(404)
    user.disabled = action == "disable"
    db.session.add(AuditEvent(actor_user_id=current_user.id, subject_user_id=user.id, action=f"user_{action}d"))
    db.session.commit()
    tokens.forget(user.id)
    flash(f"{user.email} {action}d.", "success")
    return go_to(url_for("admin.index"))
