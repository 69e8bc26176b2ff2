from __future__ import annotations

from flask import jsonify

from webapp.api import api_user, api_user_id, auth_required, bp, json_body, tokens
from webapp.api.openapi import SPEC
from webapp.auth import login_rate_limited
from webapp.brokers import BrokerAuthFailed
from webapp.services import lifecycle
from webapp.http import json_error
from webapp.services import accounts, broker_accounts, status, two_factor
from webapp.services import strategies as service
from webapp.services.errors import ValidationFailed
from webapp.services.strategies import NotEditable


def _validation(exc: ValidationFailed):  # type: ignore[no-untyped-def]
    return json_error(422, "Some fields are not valid.", fields=exc.fields)


def _token_response(user, status: int = 200):  # type: ignore[no-untyped-def]
    token, expires = tokens.issue(user)
    return jsonify(token=token, token_type="Bearer", expires_at=expires.isoformat(), user_id=user.id), status


@bp.get("/openapi.json")
def openapi():  # type: ignore[no-untyped-def]
    return jsonify(SPEC)


@bp.post("/auth/register")
def register():  # type: ignore[no-untyped-def]
    body = json_body()
    try:
        user = accounts.register(body.get("email"), body.get("password"))
    except ValidationFailed as exc:
        return _validation(exc)
    return _token_response(user, 201)


@bp.post("/auth/login")
@login_rate_limited
def login():  # type: ignore[no-untyped-def]
    body = json_body()
    user = accounts.authenticate(body.get("email"), body.get("password"))
    if user is None:
        return json_error(401, "Wrong email or password.", code="INVALID_CREDENTIALS")
    if user.totp_enabled:
        # Two-factor login is on: the code (or a recovery code) too. Scripts use an API key instead.
        if not isinstance(body.get("totp"), str) or not body["totp"].strip():
            return json_error(401, "Two-factor login is on for this account: send the current 6-digit code from "
                                   "your authenticator app as \"totp\", or use an API key.", code="TOTP_REQUIRED")
        outcome = two_factor.check_code(user, body["totp"])
        if outcome is not two_factor.Outcome.OK:
            return json_error(401, two_factor.MESSAGES[outcome], code="INVALID_TOTP")
    return _token_response(user)


@bp.get("/broker")
@auth_required
def broker_status():  # type: ignore[no-untyped-def]
    return jsonify(account=broker_accounts.describe(broker_accounts.account_for(api_user())))


@bp.post("/broker/connect")
@auth_required
def broker_connect():  # type: ignore[no-untyped-def]
    try:
        account = broker_accounts.connect(api_user(), json_body())
    except ValidationFailed as exc:
        return _validation(exc)
    except BrokerAuthFailed as exc:
        return json_error(400, str(exc), code=exc.code)
    return jsonify(account=broker_accounts.describe(account))


@bp.get("/strategies")
@auth_required
def strategies():  # type: ignore[no-untyped-def]
    return jsonify(strategies=[service.to_dict(s) for s in service.list_for(api_user())])


@bp.post("/strategy/create")
@auth_required
def strategy_create():  # type: ignore[no-untyped-def]
    try:
        strategy = service.create(api_user(), json_body())
    except ValidationFailed as exc:
        return _validation(exc)
    return jsonify(strategy_id=strategy.id, strategy=service.to_dict(strategy)), 201


@bp.get("/strategy/<int:strategy_id>")
@auth_required
def strategy_get(strategy_id: int):  # type: ignore[no-untyped-def]
    return jsonify(strategy=service.to_dict(service.get_owned(api_user(), strategy_id)))


@bp.put("/strategy/<int:strategy_id>")
@auth_required
def strategy_update(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(api_user(), strategy_id)
    try:
        service.update(strategy, json_body())
    except ValidationFailed as exc:
        return _validation(exc)
    except NotEditable as exc:
        return json_error(409, str(exc), code=exc.code)
    return jsonify(strategy=service.to_dict(strategy))


@bp.delete("/strategy/<int:strategy_id>")
@auth_required
def strategy_delete(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(api_user(), strategy_id)
    try:
        service.delete(strategy)
    except NotEditable as exc:
        return json_error(409, str(exc), code=exc.code)
    return "", 204


@bp.post("/strategy/<int:strategy_id>/start")
@auth_required
def strategy_start(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(api_user(), strategy_id)
    try:
        message = lifecycle.start(strategy)
    except lifecycle.StartRefused as exc:
        return json_error(409, str(exc), code=exc.code)
    except lifecycle.EngineUnavailable as exc:
        return json_error(503, str(exc), code=exc.code)
    return jsonify(message=message, status=status.status_for(strategy))


@bp.post("/strategy/<int:strategy_id>/stop")
@auth_required
def strategy_stop(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(api_user(), strategy_id)
    try:
        message = lifecycle.request_stop(strategy)
    except lifecycle.NotRunning as exc:
        return json_error(409, str(exc), code=exc.code)
    except lifecycle.EngineUnavailable as exc:
        return json_error(503, str(exc), code=exc.code)
    return jsonify(message=message, status=status.status_for(strategy)), 202


@bp.post("/strategy/<int:strategy_id>/acknowledge")
@auth_required
def strategy_acknowledge(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(api_user(), strategy_id)
    try:
        message = lifecycle.acknowledge(strategy, api_user_id())
    except lifecycle.NothingToAcknowledge as exc:
        return json_error(409, str(exc), code=exc.code)
    return jsonify(message=message, status=status.status_for(strategy))


@bp.get("/strategy/status/<int:strategy_id>")
@auth_required
def strategy_status(strategy_id: int):  # type: ignore[no-untyped-def]
    fast = status.running_status(strategy_id, api_user_id()) if 0 < strategy_id <= service.MAX_ID else None
    return jsonify(fast or status.status_for(service.get_owned(api_user(), strategy_id)))


@bp.get("/strategy/<int:strategy_id>/orders")
@auth_required
def strategy_orders(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(api_user(), strategy_id)
    return jsonify(orders=[status.order_to_dict(row) for row in status.orders(strategy)])


@bp.get("/strategy/<int:strategy_id>/chart")
@auth_required
def strategy_chart(strategy_id: int):  # type: ignore[no-untyped-def]
    return jsonify(status.chart_data(service.get_owned(api_user(), strategy_id)))
