from __future__ import annotations

from flask import Blueprint, current_app, flash, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from webapp.extensions import limiter
from webapp.http import go_to, is_htmx
from webapp.services import accounts
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
            login_user(user, remember=bool(request.form.get("remember")))
            target = request.args.get("next", "")
            return go_to(target if same_site_path(target) else url_for("strategies.index"))
        error = "Wrong email or password."
    return _form_page("auth/login.html", "auth/_login_form.html", 401 if error else 200, error=error, form=request.form)


@bp.post("/logout")
@login_required
def logout():  # type: ignore[no-untyped-def]
    logout_user()
    return go_to(url_for("auth.login"))
