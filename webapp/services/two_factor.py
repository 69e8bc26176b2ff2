"""Two-factor login with TOTP (RFC 6238, 30-second steps, 6 digits: any authenticator app), plus ten one-time
recovery codes.

The secret is Fernet-encrypted like broker secrets (webapp/crypto.py). A code is accepted for the current
time-step and one either side (clock drift), but only for a step later than the last one accepted: the
compare-and-set on users.totp_last_step is one UPDATE, so the same code raced from two requests is still
accepted once. Recovery codes are stored as salted PBKDF2 hashes and spent the same way (used_at set by a
conditional UPDATE). Every enable, disable and recovery-code use is an audit event.

Time is the real wall clock (time.time()), never the system's shiftable clock (webapp/clock.py): the
codes come from the user's phone. Tests replace `now` to step through time-steps without sleeping."""
from __future__ import annotations

import hmac
import io
import logging
import secrets
import time
from enum import Enum

import pyotp
import segno
from sqlalchemy import delete, or_, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from webapp import crypto
from webapp.extensions import db
from webapp.models import AuditEvent, RecoveryCode, User, utcnow

log = logging.getLogger(__name__)

STEP_SECONDS = 30
VALID_WINDOW = 1  # steps either side of now
ISSUER = "Algo"
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
_RECOVERY_HASH = "pbkdf2:sha256:50000"  # per-code salt; the codes are random (~49 bits), not passwords


def now() -> float:
    return time.time()


class Outcome(Enum):
    OK = "ok"
    WRONG = "wrong"
    REPLAYED = "replayed"


class TwoFactorError(Exception):
    """A refused two-factor action, in words for the user."""


MESSAGES = {
    Outcome.WRONG: "That code is not right. Enter the 6-digit code your authenticator app shows now, "
                   "or one of your recovery codes.",
    Outcome.REPLAYED: "That code was already used. Wait for the next code in your app (a new one comes every "
                      "30 seconds).",
}


def _secret(user: User) -> str | None:
    return crypto.decrypt(user.totp_secret_enc) if user.totp_secret_enc else None


def _audit(user: User, action: str, actor_id: int | None = None, **detail: object) -> None:
    db.session.add(AuditEvent(actor_user_id=actor_id or user.id, subject_user_id=user.id, action=action,
                              detail=detail))


def is_six_digits(code: str) -> bool:
    return len(code) == 6 and code.isascii() and code.isdigit()


def _clean(code: object) -> str:
    return "".join(code.split()) if isinstance(code, str) else ""


def check_totp(user: User, code: object, at: float | None = None) -> Outcome:
    """Accept a 6-digit code once: the latest step within the window whose code matches, if it is later than
    the last accepted step. Commits the accepted step."""
    code = _clean(code)
    secret = _secret(user)
    if secret is None or not is_six_digits(code):
        return Outcome.WRONG
    totp = pyotp.TOTP(secret)
    current = int((now() if at is None else at) // STEP_SECONDS)
    matched = [step for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1)
               if hmac.compare_digest(totp.generate_otp(step), code)]
    if not matched:
        return Outcome.WRONG
    fresh = [step for step in matched if user.totp_last_step is None or step > user.totp_last_step]
    if not fresh:
        return Outcome.REPLAYED
    step = max(fresh)
    taken = db.session.execute(
        update(User).where(User.id == user.id, or_(User.totp_last_step.is_(None), User.totp_last_step < step))
        .values(totp_last_step=step).execution_options(synchronize_session=False)).rowcount
    db.session.commit()
    db.session.refresh(user)
    return Outcome.OK if taken == 1 else Outcome.REPLAYED


def normalise_recovery(code: object) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum()) if isinstance(code, str) else ""


def check_recovery_code(user: User, code: object) -> Outcome:
    """Spend one unused recovery code; audited with how many are left."""
    clean = normalise_recovery(code)
    if len(clean) != 10:
        return Outcome.WRONG
    for row in db.session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user.id,
                                                             RecoveryCode.used_at.is_(None))):
        if check_password_hash(row.code_hash, clean):
            spent = db.session.execute(
                update(RecoveryCode).where(RecoveryCode.id == row.id, RecoveryCode.used_at.is_(None))
                .values(used_at=utcnow()).execution_options(synchronize_session=False)).rowcount
            if spent != 1:
                db.session.rollback()
                return Outcome.REPLAYED
            _audit(user, "recovery_code_used", remaining=remaining_recovery_codes(user))
            db.session.commit()
            log.info("recovery code used", extra={"event": "recovery_code_used", "user_id": user.id})
            return Outcome.OK
    return Outcome.WRONG


def check_code(user: User, code: object) -> Outcome:
    """A second factor as typed: six digits are a TOTP code, anything else is tried as a recovery code."""
    if not user.totp_enabled:
        return Outcome.WRONG
    return check_totp(user, code) if is_six_digits(_clean(code)) else check_recovery_code(user, code)


def remaining_recovery_codes(user: User) -> int:
    return len(list(db.session.scalars(select(RecoveryCode.id).where(RecoveryCode.user_id == user.id,
                                                                     RecoveryCode.used_at.is_(None)))))


# --- Enrolment


def start_enrolment(user: User) -> str:
    """A new secret, stored (encrypted) but not yet enabled; returns it."""
    if user.totp_enabled:
        raise TwoFactorError("Two-factor login is already on.")
    secret = pyotp.random_base32()
    user.totp_secret_enc = crypto.encrypt(secret)
    user.totp_last_step = None
    db.session.commit()
    return secret


def pending_secret(user: User) -> str | None:
    """The secret of an enrolment not yet confirmed, or None."""
    return None if user.totp_enabled else _secret(user)


def provisioning_uri(user: User, secret: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The otpauth:// URI as an inline SVG QR code, drawn here (segno): the secret never leaves the server."""
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=5, border=2, dark="#000", light="#fff", xmldecl=False,
                                    svgns=False, title="QR code for your authenticator app", svgclass="totp-qr",
                                    lineclass=None, omitsize=False)
    return out.getvalue().decode("utf-8")


def _new_recovery_codes(user: User) -> list[str]:
    db.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
        db.session.add(RecoveryCode(user_id=user.id, code_hash=generate_password_hash(raw, method=_RECOVERY_HASH)))
    return codes


def confirm_enrolment(user: User, code: object) -> list[str]:
    """Turn two-factor on with a current code from the new secret; returns the recovery codes (shown once)."""
    if user.totp_enabled:
        raise TwoFactorError("Two-factor login is already on.")
    if user.totp_secret_enc is None:
        raise TwoFactorError("Start the setup first.")
    outcome = check_totp(user, code)
    if outcome is not Outcome.OK:
        raise TwoFactorError(MESSAGES[outcome])
    user.totp_enabled = True
    user.totp_enabled_at = utcnow()
    codes = _new_recovery_codes(user)
    _audit(user, "two_factor_enabled")
    db.session.commit()
    log.info("two-factor enabled", extra={"event": "two_factor_enabled", "user_id": user.id})
    return codes


def regenerate_recovery_codes(user: User, code: object) -> list[str]:
    """Ten new recovery codes for a current code (the old ones stop working)."""
    if not user.totp_enabled:
        raise TwoFactorError("Two-factor login is off.")
    outcome = check_code(user, code)
    if outcome is not Outcome.OK:
        raise TwoFactorError(MESSAGES[outcome])
    codes = _new_recovery_codes(user)
    _audit(user, "recovery_codes_regenerated")
    db.session.commit()
    return codes


def disable(user: User, code: object, admin_required: bool) -> None:
    """Turn two-factor off: needs a current code or a recovery code. An admin cannot while it is required."""
    if not user.totp_enabled:
        raise TwoFactorError("Two-factor login is already off.")
    if user.is_admin and admin_required:
        raise TwoFactorError("Admins must keep two-factor login on.")
    outcome = check_code(user, code)
    if outcome is not Outcome.OK:
        raise TwoFactorError(MESSAGES[outcome])
    user.totp_enabled = False
    user.totp_enabled_at = None
    user.totp_secret_enc = None
    user.totp_last_step = None
    db.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    _audit(user, "two_factor_disabled")
    db.session.commit()
    log.info("two-factor disabled", extra={"event": "two_factor_disabled", "user_id": user.id})
