from __future__ import annotations

import time

from flask import Blueprint, current_app, flash, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_limiter.util import get_remote_address

from webapp.extensions import db, limiter
from webapp.http import go_to, is_htmx
from webapp.models import User
from webapp.services import accounts, two_factor
from webapp.services.errors import ValidationFailed

bp = Blueprint("auth", __name__)


def login_account_key() -> str:
    """Rate-limit key for one account, from the form or JSON body, so guessing one person's password
    from many addresses is limited too."""
    body = request.get_json(silent=True) if request.is_json else request.form
    email = body.get("email") if isinstance(body, dict) or hasattr(body, "get") else ""
    return "account:" + accounts.normalise_email(email)


login_limits = [
    limiter.shared_limit(lambda: current_app.config["LOGIN_LIMIT_PER_IP"], scope="login-ip", methods=["POST"]),
    limiter.shared_limit(
        lambda: current_app.config["LOGIN_LIMIT_PER_ACCOUNT"], scope="login-account",
        key_func=login_account_key, methods=["POST"],
    ),
]


def login_rate_limited(view):  # type: ignore[no-untyped-def]
    for limit in login_limits:
        view = limit(view)
    return view


def same_site_path(target: str) -> bool:
    """Only a path on this site may follow a login: an open redirect is a phishing aid. Browsers drop tabs
    and newlines from a URL and read `\\` as `/`, so `/<tab>/evil.example` and `/\\evil.example` are another
    host to them: any control character or backslash refuses the target."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return False
    return not any(ord(char) < 0x20 or ord(char) == 0x7F for char in target)


def _form_page(template: str, partial: str, status: int = 200, **context):  # type: ignore[no-untyped-def]
    return render_template(partial if is_htmx() else template, **context), status


@bp.route("/register", methods=["GET", "POST"])
def register():  # type: ignore[no-untyped-def]
    if current_user.is_authenticated:
        return go_to(url_for("strategies.index"))
    errors: dict[str, str] = {}
    if request.method == "POST":
        try:
            user = accounts.register(request.form.get("email"), request.form.get("password"))
        except ValidationFailed as exc:
            errors = exc.fields
        else:
            login_user(user)
            flash("Welcome! Connect a broker account next (paper mode needs no real one).", "success")
            return go_to(url_for("broker.connect"))
    return _form_page(
        "auth/register.html", "auth/_register_form.html", 422 if errors else 200,
        errors=errors, form=request.form, password_rule=accounts.PASSWORD_RULE,
    )


@bp.route("/login", methods=["GET", "POST"])
@login_rate_limited
def login():  # type: ignore[no-untyped-def]
    if current_user.is_authenticated:
        return go_to(url_for("strategies.index"))
    error = None
    if request.method == "POST":
        user = accounts.authenticate(request.form.get("email"), request.form.get("password"))
        if user:
            target = request.args.get("next", "")
            target = target if same_site_path(target) else url_for("strategies.index")
            remember = bool(request.form.get("remember"))
            if user.totp_enabled:
                # Not logged in yet: the second factor first. The signed session holds who is half-way, briefly.
                session[PENDING] = {"user_id": user.id, "remember": remember, "next": target,
                                    "until": time.time() + current_app.config["TWO_FACTOR_PENDING_SECONDS"]}
                return go_to(url_for("auth.two_factor_login"))
            login_user(user, remember=remember)
            return go_to(target)
        error = "Wrong email or password."
    return _form_page("auth/login.html", "auth/_login_form.html", 401 if error else 200, error=error, form=request.form)


PENDING = "two_factor_pending"


def _pending_user() -> tuple[User, dict] | None:
    """The user who gave the right password here moments ago and still owes the code, or None."""
    pending = session.get(PENDING)
    if not isinstance(pending, dict) or not isinstance(pending.get("user_id"), int):
        return None
    if not isinstance(pending.get("until"), (int, float)) or pending["until"] < time.time():
        session.pop(PENDING, None)
        return None
    user = db.session.get(User, pending["user_id"])
    if user is None or user.disabled or not user.totp_enabled:
        session.pop(PENDING, None)
        return None
    return user, pending


def _pending_key() -> str:
    """Rate-limit key for the second step: the half-logged-in account (else the address)."""
    pending = session.get(PENDING)
    uid = pending.get("user_id") if isinstance(pending, dict) else None
    return f"account-2fa:{uid}" if isinstance(uid, int) else "ip-2fa:" + get_remote_address()


second_step_limits = [
    login_limits[0],  # the per-address login limit, shared with the password step
    # Only refused codes count against the account: a trader logging in and out is never slowed.
    limiter.shared_limit(lambda: current_app.config["LOGIN_LIMIT_PER_ACCOUNT"], scope="login-2fa",
                         key_func=_pending_key, methods=["POST"],
                         deduct_when=lambda response: response.status_code == 401),
]


def _second_step_rate_limited(view):  # type: ignore[no-untyped-def]
    for limit in second_step_limits:
        view = limit(view)
    return view


@bp.route("/login/two-factor", methods=["GET", "POST"])
@_second_step_rate_limited
def two_factor_login():  # type: ignore[no-untyped-def]
    """The second step: the 6-digit code from the authenticator app, or a recovery code."""
    if current_user.is_authenticated:
        return go_to(url_for("strategies.index"))
    found = _pending_user()
    if found is None:
        flash("Log in with your email and password first (the code must follow within a few minutes).", "info")
        return go_to(url_for("auth.login"))
    user, pending = found
    error = None
    if request.method == "POST":
        outcome = two_factor.check_code(user, request.form.get("code"))
        if outcome is two_factor.Outcome.OK:
            session.pop(PENDING, None)
            login_user(user, remember=bool(pending.get("remember")))
            if two_factor.remaining_recovery_codes(user) <= 2:
                flash("You have few recovery codes left: make new ones on the Security page.", "info")
            target = pending.get("next")
            return go_to(target if isinstance(target, str) and same_site_path(target) else url_for("strategies.index"))
        error = two_factor.MESSAGES[outcome]
    return render_template("auth/two_factor.html", error=error), 401 if error else 200


@bp.post("/logout")
@login_required
def logout():  # type: ignore[no-untyped-def]
    logout_user()
    return go_to(url_for("auth.login"))
