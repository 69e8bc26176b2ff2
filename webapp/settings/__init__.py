"""Per-user settings pages. Risk limits: the daily loss limit (rupees) and the maximum of open positions,
with today's P&L against the limit and today's halt (webapp/services/risk.py). Also gives every page the
user's halt for the banner in base.html."""
from __future__ import annotations

import logging

from flask import Blueprint, flash, render_template, request, url_for
from flask_login import current_user, login_required

from webapp.http import go_to, is_htmx
from webapp.models import DayHalt
from webapp.services import risk
from webapp.services.errors import ValidationFailed

bp = Blueprint("settings", __name__, url_prefix="/settings")


@bp.after_request
def _not_cached(response):  # type: ignore[no-untyped-def]
    response.headers["Cache-Control"] = "no-store"  # the Security page shows a TOTP secret, recovery codes, keys
    return response
log = logging.getLogger(__name__)


@bp.route("/risk", methods=["GET", "POST"])
@login_required
def risk_limits():  # type: ignore[no-untyped-def]
    errors: dict[str, str] = {}
    form: dict[str, str] = {}
    if request.method == "POST":
        form = {name: request.form.get(name, "") for name in ("daily_loss_limit", "max_open_positions")}
        try:
            risk.update_limits(current_user, form)
        except ValidationFailed as exc:
            errors = exc.fields
        else:
            flash("Risk limits saved.", "success")
            return go_to(url_for("settings.risk_limits"))
    context = {"errors": errors, "form": form, "risk": risk.describe(current_user)}
    template = "settings/_risk_form.html" if is_htmx() else "settings/risk.html"
    return render_template(template, **context), 422 if errors else 200


@bp.app_context_processor
def _day_halt() -> dict:
    """`day_halt()` in any template: today's halt of the logged-in user, or None. A function, so only the
    pages that show the banner (base.html) pay its query, never an HTMX fragment."""
    def day_halt() -> DayHalt | None:
        if not current_user.is_authenticated:
            return None
        try:
            return risk.current_halt(current_user.id)
        except Exception:  # noqa: BLE001 — the error page extends base.html too; it must still render
            log.exception("day halt unreadable", extra={"event": "day_halt_unreadable"})
            return None
    return {"day_halt": day_halt}


from webapp.settings import security  # noqa: E402,F401  (the Security page: two-factor login and API keys)
