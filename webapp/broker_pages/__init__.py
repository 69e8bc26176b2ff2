from __future__ import annotations

import secrets

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required

from webapp.brokers import BrokerAuthFailed
from webapp.http import go_to, is_htmx
from webapp.extensions import csrf
from webapp.services import broker_accounts, order_updates
from webapp.services.errors import ValidationFailed

bp = Blueprint("broker", __name__, url_prefix="/broker")
LABELS = {"api_key": "API key", "api_secret": "API secret", "access_token": "access token"}
KEPT_MAX = 100  # the API key typed back into the form after an error; longer is not a key anyway


def plain_words(exc: BrokerAuthFailed) -> str:
    """The broker's refusal for a person: field names as the form labels them, and no BROKER_AUTH_FAILED code
    (that stays in the JSON API, for programs)."""
    message = str(exc).strip().removeprefix("Kite did not accept these credentials:").strip()
    message = message or "the broker did not say why"
    for field, label in LABELS.items():
        message = message.replace(field, label)
    return message[:1].upper() + message[1:]


def _refused_fields(exc: BrokerAuthFailed) -> dict[str, str]:
    """Which fields the refusal names (the paper broker names each badly formed one), to mark them invalid."""
    errors: dict[str, str] = {}
    for part in str(exc).split(";"):
        for field in LABELS:
            if field in part and field not in errors:
                errors[field] = plain_words(BrokerAuthFailed(part.strip())) + "."
    return errors


@bp.route("", methods=["GET", "POST"])
@login_required
def connect():  # type: ignore[no-untyped-def]
    errors: dict[str, str] = {}
    auth_error = None
    kept: dict[str, str] = {}
    if request.method == "POST":
        # Only the API key is typed back after an error: it is not a secret (the page shows its last 4 anyway).
        # The secret and the token are never sent back to the browser, not even masked: keeping them "unchanged"
        # would mean holding an unsaved secret in the session between two posts.
        kept = {"api_key": request.form.get("api_key", "").strip()[:KEPT_MAX]}
        try:
            posted = request.form.to_dict()
            if posted.get("proxy_remove"):
                posted["proxy"] = ""  # the box removes the stored proxy
            elif not posted.get("proxy", "").strip():
                posted.pop("proxy", None)  # an empty field keeps it
            broker_accounts.connect(current_user, posted)
        except ValidationFailed as exc:
            errors = exc.fields
        except BrokerAuthFailed as exc:
            auth_error = {"code": exc.code, "message": plain_words(exc)}
            errors = _refused_fields(exc)
        else:
            flash("Broker account connected.", "success")
            return go_to(url_for("strategies.index"))
    context = {
        "errors": errors,
        "auth_error": auth_error,
        "kept": kept,
        "account": broker_accounts.describe(broker_accounts.account_for(current_user)),
        "broker_name": current_app.config["BROKER"],
    }
    status = 422 if errors or auth_error else 200
    return render_template("broker/_form.html" if is_htmx() else "broker/connect.html", **context), status


@bp.get("/kite/login")
@login_required
def kite_login():  # type: ignore[no-untyped-def]
    """"Log in with Kite": off to Kite's login page, which comes back to kite_callback."""
    account = broker_accounts.account_for(current_user)
    if account is None or account.broker != "kite":
        flash("Save your Kite API key and secret first.", "error")
        return redirect(url_for("broker.connect"))
    session["kite_state"] = state = secrets.token_urlsafe(16)
    return redirect(broker_accounts.kite_login_url(account, state))


@bp.get("/kite/callback")
@login_required
def kite_callback():  # type: ignore[no-untyped-def]
    """Kite's redirect after login, with request_token (and our state, so a forged link is refused)."""
    expected = session.pop("kite_state", None)
    account = broker_accounts.account_for(current_user)
    if not expected or request.args.get("state") != expected or account is None:
        flash("That Kite login link is not one this session started. Please log in with Kite again.", "error")
    elif request.args.get("status") != "success" or not request.args.get("request_token"):
        flash("The Kite login did not complete.", "error")
    else:
        try:
            broker_accounts.complete_kite_login(account, request.args["request_token"])
        except BrokerAuthFailed as exc:
            flash(f"{plain_words(exc)}. Please log in with Kite again; if it keeps failing, check the API secret "
                  "saved here matches the one on the Kite developer console.", "error")
        else:
            flash("Logged in with Kite. Your session lasts until 06:00 IST tomorrow.", "success")
            return redirect(url_for("strategies.index"))
    return redirect(url_for("broker.connect"))


@bp.post("/kite/postback")
@csrf.exempt  # Kite's server posts here; the order's checksum is the authentication
def kite_postback():  # type: ignore[no-untyped-def]
    """Kite's order updates (the app's postback URL): verified, then handed to the engine."""
    try:
        order_updates.accept_postback(request.get_json(silent=True))
    except order_updates.Refused as exc:
        return jsonify(error="FORBIDDEN", message=str(exc)), 403
    return jsonify(status="ok")
