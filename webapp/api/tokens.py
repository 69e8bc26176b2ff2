"""Signed, expiring bearer tokens (JWT, HS256) for phones and scripts.

A dashboard polls with the same token every few seconds, so a token's signature is checked once per
process (the answer cannot change) and whether its user is still enabled is read at most every
ACTIVE_CHECK_SECONDS: a user the admin disables is refused within that time everywhere, and at once
by the process that disabled them."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import jwt
from flask import Flask, current_app

from webapp.extensions import db
from webapp.models import User

_ALGORITHM = "HS256"
_AUDIENCE = "algo-api"
ACTIVE_CHECK_SECONDS = 2.0


def issue(user: User) -> tuple[str, datetime]:
    expires = datetime.now(timezone.utc) + timedelta(seconds=current_app.config["API_TOKEN_TTL_SECONDS"])
    payload = {"sub": str(user.id), "aud": _AUDIENCE, "iat": datetime.now(timezone.utc), "exp": expires}
    return jwt.encode(payload, current_app.config["SECRET_KEY"], algorithm=_ALGORITHM), expires


@lru_cache(maxsize=8192)
def _claims(token: str, secret: str) -> tuple[int, float] | None:
    """(user id, expiry) of a well-signed token, or None; expiry is checked on every use by the caller."""
    try:
        payload = jwt.decode(token, secret, algorithms=[_ALGORITHM], audience=_AUDIENCE,
                             options={"require": ["exp", "sub", "aud"], "verify_exp": False})
        return int(payload["sub"]), float(payload["exp"])
    except (jwt.PyJWTError, ValueError, TypeError):
        return None


def _enabled_cache(app: Flask) -> dict[int, tuple[float, bool]]:
    return app.extensions.setdefault("api_enabled_users", {})


def user_id(token: str) -> int | None:
    """The id of the enabled user this unexpired token was issued to, or None."""
    claims = _claims(token, current_app.config["SECRET_KEY"])
    if claims is None or claims[1] <= time.time():
        return None
    uid = claims[0]
    cache = _enabled_cache(current_app)
    checked = cache.get(uid)
    if checked is None or time.monotonic() - checked[0] > ACTIVE_CHECK_SECONDS:
        user = db.session.get(User, uid)
        checked = (time.monotonic(), user is not None and not user.disabled)
        cache[uid] = checked
    return uid if checked[1] else None


def forget(uid: int) -> None:
    """The user was disabled or enabled: this process asks the database again on their next request."""
    _enabled_cache(current_app).pop(uid, None)
