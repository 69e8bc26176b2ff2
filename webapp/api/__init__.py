"""JSON API, /api/v1. Authenticated by `Authorization: Bearer <token>` (from /auth/login), by
`Authorization: Bearer ak_…` (a per-user API key, webapp/services/api_keys.py) or by the browser session;
session-authenticated writes must carry the CSRF token like any form."""
from __future__ import annotations

import json
from functools import wraps
from typing import Any, Callable

from flask import Blueprint, g, request
from flask_login import current_user

from webapp.api import tokens
from webapp.extensions import csrf, db
from webapp.http import json_error
from webapp.models import User
from webapp.services import api_keys
from webapp.services.errors import ValidationFailed

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.before_request
def _authenticate() -> None:
    g.api_user_id = None
    g.by_api_key = False
    header = request.headers.get("Authorization", "")
    if header:
        # An Authorization header is the only credential then: a bad token never falls back to cookies.
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            g.by_api_key = api_keys.looks_like_key(token)
            g.api_user_id = api_keys.user_id(token) if g.by_api_key else tokens.user_id(token)
        return
    if current_user.is_authenticated:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            csrf.protect()
        g.api_user = current_user._get_current_object()
        g.api_user_id = g.api_user.id


def api_user_id() -> int:
    return g.api_user_id


def api_user() -> User:
    """Loaded only by routes that need the row: the status route of a running strategy does not."""
    if "api_user" not in g:
        g.api_user = db.session.get(User, g.api_user_id)
    return g.api_user


def auth_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.get("api_user_id") is None:
            response, status = json_error(401, "Log in first: send 'Authorization: Bearer <token>'.")
            response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
            return response, status
        return view(*args, **kwargs)

    return wrapper


def json_body() -> dict:
    """The request's JSON object, or an empty dict when the body is not one (validation then says what
    is missing, field by field). JSON may spell lone UTF-16 surrogates ("\\ud800") that no database or
    hash can store: such a body is refused as a whole."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return {}
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed({"body": "The request contains text that is not valid Unicode."}) from None
    return body


from webapp.api import routes  # noqa: E402,F401  (registers the routes on bp)
from webapp.api import risk  # noqa: E402,F401  (GET/PUT /api/v1/risk)
from webapp.api import history  # noqa: E402,F401  (run history and CSV exports)
from webapp.api import keys  # noqa: E402,F401  (API keys: list, create, revoke)
