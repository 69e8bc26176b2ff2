"""Signed, expiring bearer tokens (JWT, HS256) for phones and scripts."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import jwt
from flask import current_app

from webapp.extensions import db
from webapp.models import User

_ALGORITHM = "HS256"
_AUDIENCE = "algo-api"


def issue(user: User) -> tuple[str, datetime]:
    expires = datetime.now(timezone.utc) + timedelta(seconds=current_app.config["API_TOKEN_TTL_SECONDS"])
    payload = {"sub": str(user.id), "aud": _AUDIENCE, "iat": datetime.now(timezone.utc), "exp": expires}
    return jwt.encode(payload, current_app.config["SECRET_KEY"], algorithm=_ALGORITHM), expires


def verify(token: str) -> User | None:
    try:
        payload = jwt.decode(
            token, current_app.config["SECRET_KEY"], algorithms=[_ALGORITHM], audience=_AUDIENCE,
            options={"require": ["exp", "sub", "aud"]},
        )
        user = db.session.get(User, int(payload["sub"]))
    except (jwt.PyJWTError, ValueError):
        return None
    return user if user is not None and not user.disabled else None
