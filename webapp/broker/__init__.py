from __future__ import annotations

from flask import Blueprint, current_app, flash, render_template, request, url_for
from flask_login import current_user, login_required

from webapp.brokers import BrokerAuthFailed
from webapp.http import go_to, is_htmx
from webapp.services import broker_accounts
from webapp.services.errors import ValidationFailed

bp = Blueprint("broker", __name__, url_prefix="/broker")


@bp.route("", methods=["GET", "POST"])
@login_required
def connect():  # type: ignore[no-untyped-def]
    errors: dict[str, str] = {}
    auth_error = None
    if request.method == "POST":
        try:
            broker_accounts.connect(current_user, request.form)
        except ValidationFailed as exc:
            errors = exc.fields
        except BrokerAuthFailed as exc:
            auth_error = {"code": exc.code, "message": str(exc)}
        else:
            flash("Broker account connected.", "success")
            return go_to(url_for("strategies.index"))
    context = {
        "errors": errors,
        "auth_error": auth_error,
        "account": broker_accounts.describe(broker_accounts.account_for(current_user)),
        "broker_name": current_app.config["BROKER"],
    }
    status = 422 if errors or auth_error else 200
    return render_template("broker/_form.html" if is_htmx() else "broker/connect.html", **context), status
