"""Registration and login rules."""
from __future__ import annotations

import logging

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import User
from webapp.services.errors import ValidationFailed

log = logging.getLogger(__name__)

PASSWORD_RULE = "At least 10 characters, with at least one letter and one digit."
# A dummy hash so a login for an unknown email costs the same as one for a known email.
_TIMING_DUMMY = User(password_hash="scrypt:32768:8:1$x$" + "0" * 128)


def normalise_email(raw: object) -> str:
    return raw.strip().lower() if isinstance(raw, str) else ""


def _check_password_rule(password: object) -> str | None:
    if not isinstance(password, str) or len(password) < 10:
        return PASSWORD_RULE
    if len(password) > 256:
        return "At most 256 characters."
    if not any(c.isalpha() for c in password) or not any(c.isdigit() for c in password):
        return PASSWORD_RULE
    return None


def register(email: object, password: object) -> User:
    errors: dict[str, str] = {}
    address = normalise_email(email)
    try:
        address = validate_email(address, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        errors["email"] = f"Enter a valid email address ({exc})."
    if "email" not in errors and db.session.scalar(select(User.id).where(User.email == address)):
        errors["email"] = "An account with this email already exists."
    if message := _check_password_rule(password):
        errors["password"] = message
    if errors:
        raise ValidationFailed(errors)
    user = User(email=address)
    user.set_password(password)  # type: ignore[arg-type]
    db.session.add(user)
    db.session.commit()
    log.info("user registered", extra={"event": "user_registered", "user_id": user.id})
    return user


def authenticate(email: object, password: object) -> User | None:
    user = db.session.scalar(select(User).where(User.email == normalise_email(email)))
    if user is None or not isinstance(password, str):
        _TIMING_DUMMY.check_password(password if isinstance(password, str) else "")
        return None
    if not user.check_password(password) or user.disabled:
        return None
    return user
