"""Per-user API keys for JSON API clients: "ak_<prefix>_<secret>", sent as `Authorization: Bearer ak_…`.

Only the key's SHA-256 is stored (the key is 32 random bytes, so a fast hash is enough); the prefix finds
the row and is what the owner sees in the list. The row is read on every request, never cached, so a revoked
key (or its user, disabled) is refused on the very next request, in every process. last_used_at is written
at most once a minute per key, so a dashboard polling every few seconds does not write on every poll.
Creating and revoking a key are audit events."""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta

from sqlalchemy import false, func, select, update

from webapp.extensions import db
from webapp.models import ApiKey, AuditEvent, User, utcnow
from webapp.services.errors import ValidationFailed

log = logging.getLogger(__name__)

KEY_PREFIX = "ak_"
NAME_MAX = 80
MAX_ACTIVE_KEYS = 20
LAST_USED_EVERY = timedelta(seconds=60)
MAX_ID = 2**31 - 1


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def _clean_name(raw: object) -> str:
    if raw is None or raw == "":
        return "API key"
    if not isinstance(raw, str):
        raise ValidationFailed({"name": "The name must be text."})
    name = " ".join(raw.split())
    if not name:
        return "API key"
    if len(name) > NAME_MAX:
        raise ValidationFailed({"name": f"At most {NAME_MAX} characters."})
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise ValidationFailed({"name": "The name cannot contain control characters."})
    return name


def create(user: User, name: object) -> tuple[ApiKey, str]:
    """A new key; returns the row and the key itself, which is shown this once and never stored."""
    clean = _clean_name(name)
    active = db.session.scalar(select(func.count(ApiKey.id)).where(ApiKey.user_id == user.id,
                                                                   ApiKey.revoked_at.is_(None)))
    if active >= MAX_ACTIVE_KEYS:
        raise ValidationFailed({"name": f"You already have {MAX_ACTIVE_KEYS} active keys: revoke one first."})
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(user_id=user.id, name=clean, prefix=prefix, key_hash=_hash(key))
    db.session.add(row)
    db.session.flush()
    db.session.add(AuditEvent(actor_user_id=user.id, subject_user_id=user.id, action="api_key_created",
                              detail={"key_id": row.id, "prefix": prefix, "name": clean}))
    db.session.commit()
    log.info("api key created", extra={"event": "api_key_created", "user_id": user.id, "key_id": row.id})
    return row, key


def list_for(user: User) -> list[ApiKey]:
    return list(db.session.scalars(select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.id)))


def get_owned(user_id: int, key_id: int) -> ApiKey | None:
    if not 0 < key_id <= MAX_ID:
        return None
    row = db.session.get(ApiKey, key_id)
    return row if row is not None and row.user_id == user_id else None


def revoke(user_id: int, key_id: int) -> ApiKey | None:
    """Revoke one of the user's keys (again: no change); None when it is not theirs."""
    row = get_owned(user_id, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.session.add(AuditEvent(actor_user_id=user_id, subject_user_id=user_id, action="api_key_revoked",
                                  detail={"key_id": row.id, "prefix": row.prefix, "name": row.name}))
        db.session.commit()
        log.info("api key revoked", extra={"event": "api_key_revoked", "user_id": user_id, "key_id": row.id})
    return row


def user_id(key: str) -> int | None:
    """The id of the enabled user whose unrevoked key this is, or None."""
    prefix, _, secret = key[len(KEY_PREFIX):].partition("_")
    if not prefix or not secret or len(prefix) > 16:
        return None
    found = db.session.execute(
        select(ApiKey.id, ApiKey.user_id, ApiKey.key_hash, ApiKey.last_used_at)
        .join(User, User.id == ApiKey.user_id)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None), User.disabled == false())).first()
    if found is None or not hmac.compare_digest(found.key_hash, _hash(key)):
        return None
    now = utcnow()
    if found.last_used_at is None or now - found.last_used_at >= LAST_USED_EVERY:
        db.session.execute(update(ApiKey).where(ApiKey.id == found.id).values(last_used_at=now)
                           .execution_options(synchronize_session=False))
        db.session.commit()
    return found.user_id


def to_dict(row: ApiKey) -> dict:
    def iso(moment):  # type: ignore[no-untyped-def]
        return moment.isoformat() if moment else None
    return {"id": row.id, "name": row.name, "prefix": f"{KEY_PREFIX}{row.prefix}", "created_at": iso(row.created_at),
            "last_used_at": iso(row.last_used_at), "revoked_at": iso(row.revoked_at),
            "active": row.revoked_at is None}
