"""Admin pages: kill switch, health, users. Anyone without the admin role gets a plain 404, so the
area does not even announce itself."""
from __future__ import annotations

from flask import (Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request,
                   stream_with_context, url_for)
from flask_login import current_user
from sqlalchemy import select

from webapp.api import tokens
from webapp.extensions import csrf, db
from webapp.feeds import session as feed_session
from webapp.http import csv_attachment, go_to
from webapp.models import AuditEvent, User, active_kill_switches, kill_switch_for
from webapp.money import inr
from webapp.services import audit_export, health, kill_switch
from webapp.services.errors import ValidationFailed

bp = Blueprint("admin", __name__, url_prefix="/admin")
MAX_ID = 2**31 - 1  # user ids are the database's INTEGER


@bp.before_request
def _admins_only():  # type: ignore[no-untyped-def]
    """The role is checked before CSRF (the blueprint is CSRF-exempt at app level), so a non-admin's post
    gets the same 404 as a get, not a 400 that would give the route away. An admin without two-factor login
    (while ADMIN_TWO_FACTOR_REQUIRED) is sent to set it up on the Security page."""
    if not (current_user.is_authenticated and current_user.is_admin):
        abort(404)
    if current_app.config["ADMIN_TWO_FACTOR_REQUIRED"] and not current_user.totp_enabled:
        # Never a 403 that locks an admin out: the way in is to turn two-factor login on, here.
        flash("Admins need two-factor login: turn it on below, then the admin pages (kill switch included) open.",
              "info")
        return redirect(url_for("settings.security") + "#two-factor", code=303)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()


@bp.get("")
def index():  # type: ignore[no-untyped-def]
    users = list(db.session.scalars(select(User).order_by(User.id)))
    audit = list(db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(30)))
    emails = {u.id: u.email for u in users}
    lines = [(a, audit_text(a, emails)) for a in audit]
    return render_template("admin/index.html", users=users, switches=active_kill_switches(), health=health.snapshot(),
                           audit=lines, confirmation=kill_switch.CONFIRMATION, reason_max=kill_switch.REASON_MAX,
                           feed_accounts=feed_session.candidates())


@bp.app_context_processor
def _kill_switch_banner() -> dict:
    """`kill_switch_banner()` in any template: the engaged switch that covers the logged-in user (global or
    theirs), or None. A function, so only base.html pays the query, never an HTMX fragment."""
    def kill_switch_banner():  # type: ignore[no-untyped-def]
        if not current_user.is_authenticated:
            return None
        try:
            return kill_switch_for(current_user.id)
        except Exception:  # noqa: BLE001 — the error page extends base.html too; it must still render
            current_app.logger.exception("kill switch unreadable")
            return None
    return {"kill_switch_banner": kill_switch_banner}


def _who(user_id: int | None, emails: dict[int, str]) -> str:
    return f"{emails.get(user_id, 'a deleted user')} (#{user_id})" if user_id is not None else "everyone"


def _plain(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    return "—" if value is None or value == "" else str(value)


def _count(n: object, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def audit_text(event: AuditEvent, emails: dict[int, str]) -> str:
    """One audit event in words an admin reads at a glance, never a Python dict."""
    d = event.detail if isinstance(event.detail, dict) else {}
    action = event.action
    subject = _who(event.subject_user_id, emails)
    strategy = f"strategy #{event.strategy_id}" if event.strategy_id else "a strategy"
    if action == "kill_switch_engaged":
        scope = "global" if d.get("scope") == "global" or event.subject_user_id is None else f"for {subject}"
        return (f"kill switch engaged ({scope}): reason “{d.get('reason', '')}” — "
                f"{_count(d.get('strategies', 0), 'strategy', 'strategies')} stopped, "
                f"{_count(d.get('in_position', 0), 'position', 'positions')} squared off")
    if action == "kill_switch_released":
        scope = "global" if event.subject_user_id is None else f"for {subject}"
        return f"kill switch released ({scope}): it was engaged for “{d.get('reason', '')}”"
    if action in ("user_disabled", "user_enabled"):
        return f"user {subject} {action.removeprefix('user_')}"
    if action == "admin_granted":
        return f"admin role granted to {subject}" + (f" (via {d['via']})" if d.get("via") else "")
    if action == "market_feed_account":
        account = d.get("broker_account_id")
        return f"market-data account set to Kite account #{account}" if account else "market-data account cleared"
    if action == "strategy_deployed":
        text = f"{strategy} of {subject} deployed on {_plain(d.get('weekdays'))}"
        return text + (f", next run {d['next_run']}" if d.get("next_run") else "")
    if action == "strategy_undeployed":
        return f"{strategy} of {subject} undeployed"
    if action == "run_skipped":
        return f"{strategy} of {subject}: run of {d.get('run_date', '—')} skipped: {d.get('reason', '—')}"
    if action == "strategy_failed":
        held = "position unknown" if d.get("position_unknown") else f"position {d.get('position', 0)}"
        return f"{strategy} of {subject} failed: {d.get('reason', '—')} ({held})"
    if action == "position_acknowledged":
        return f"{strategy} of {subject}: position of {d.get('position', '—')} acknowledged as held"
    if action == "runtime_corrupt":
        return f"{strategy} of {subject}: run state unreadable: {d.get('problem', '—')}"
    if action == "daily_loss_limit_hit":
        return (f"daily loss limit hit for {subject} on {d.get('trading_day', '—')}: P&L {_money(d.get('pnl'))} "
                f"against a limit of {_money(d.get('daily_loss_limit'))}, "
                f"{_count(d.get('open_positions', 0), 'open position', 'open positions')} squared off")
    if action in ("two_factor_enabled", "two_factor_disabled"):
        return f"two-factor login turned {'on' if action.endswith('enabled') else 'off'} by {subject}"
    if action == "recovery_code_used":
        return f"{subject} used a recovery code ({_plain(d.get('remaining'))} left)"
    if action == "recovery_codes_regenerated":
        return f"{subject} made new recovery codes"
    if action in ("api_key_created", "api_key_revoked"):
        return (f"API key “{d.get('name', '—')}” (ak_{d.get('prefix', '—')}) of {subject} "
                f"{action.removeprefix('api_key_')}")
    if action == "risk_limits_changed":
        changes = [f"{str(k).replace('_', ' ')} {_plain(v.get('from'))} → {_plain(v.get('to'))}"
                   for k, v in d.items() if isinstance(v, dict)]
        return f"risk limits of {subject} changed: " + ("; ".join(changes) or "—")
    text = action.replace("_", " ")
    if event.subject_user_id:
        text += f" ({subject})"
    return text + (f": {_plain(d)}" if d else "")


def _money(value: object) -> str:
    try:
        return inr(value)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 — an audit line never fails the page
        return _plain(value)


@bp.get("/audit.csv")
def audit_csv():  # type: ignore[no-untyped-def]
    """Every audit event as CSV (streamed), optionally ?from=YYYY-MM-DD&to=YYYY-MM-DD, both IST and inclusive."""
    try:
        first = audit_export.ist_day(request.args.get("from"), "from")
        last = audit_export.ist_day(request.args.get("to"), "to")
    except ValidationFailed as exc:
        abort(400, description=f"{exc}")
    return csv_attachment((stream_with_context(audit_export.rows(first, last)), audit_export.filename(first, last)))


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
    except kill_switch.NotConfirmed as exc:  # AlreadyEngaged too: refused, never stacked
        flash(f"Kill switch not engaged: {exc}", "error")
    else:
        scope = "everyone" if user_id is None else f"user {user_id}"
        flash(f"Kill switch engaged for {scope}: {_count(stopped, 'running strategy is', 'running strategies are')} "
              "being stopped and squared off.",
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
