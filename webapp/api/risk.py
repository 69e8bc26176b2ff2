"""GET/PUT /api/v1/risk: the user's risk limits, today's P&L against them and today's halt
(webapp/services/risk.py)."""
from __future__ import annotations

from flask import jsonify

from webapp.api import api_user, auth_required, bp, json_body
from webapp.http import json_error
from webapp.services import risk
from webapp.services.errors import ValidationFailed


@bp.get("/risk")
@auth_required
def risk_get():  # type: ignore[no-untyped-def]
    return jsonify(risk.describe(api_user()))


@bp.put("/risk")
@auth_required
def risk_put():  # type: ignore[no-untyped-def]
    """A field absent is left as it is; null (or "") removes that limit."""
    user = api_user()
    try:
        risk.update_limits(user, json_body())
    except ValidationFailed as exc:
        return json_error(422, "Some fields are not valid.", fields=exc.fields)
    return jsonify(risk.describe(user))
