"""The Security settings page: two-factor login (set up with a QR code drawn here, confirm with a code, the
ten recovery codes shown once; turn off with a code) and API keys for scripts (create: the key is shown
once; revoke). Code-checking posts are rate-limited per user like the login."""
from __future__ import annotations

from flask import abort, current_app, flash, render_template, request, url_for
from flask_limiter.util import get_remote_address
from flask_login import current_user, login_required

from webapp.extensions import limiter
from webapp.http import go_to
from webapp.services import api_keys, two_factor
from webapp.services.errors import ValidationFailed
from webapp.settings import bp


def _user_key() -> str:
    return f"user-2fa:{current_user.get_id() or get_remote_address()}"


code_limited = limiter.shared_limit(lambda: current_app.config["LOGIN_LIMIT_PER_ACCOUNT"], scope="settings-2fa",
                                    key_func=_user_key, methods=["POST"])


def admin_must_enrol() -> bool:
    return bool(current_user.is_admin and not current_user.totp_enabled
                and current_app.config["ADMIN_TWO_FACTOR_REQUIRED"])


def _page(status: int = 200, **context):  # type: ignore[no-untyped-def]
    secret = two_factor.pending_secret(current_user)
    enrolment = None
    if secret:
        enrolment = {"secret": secret, "qr": two_factor.qr_svg(two_factor.provisioning_uri(current_user, secret))}
    context.setdefault("errors", {})
    return render_template(
        "settings/security.html", enrolment=enrolment, keys=api_keys.list_for(current_user),
        remaining=two_factor.remaining_recovery_codes(current_user) if current_user.totp_enabled else 0,
        admin_must_enrol=admin_must_enrol(),
        admin_required=current_user.is_admin and current_app.config["ADMIN_TWO_FACTOR_REQUIRED"], **context,
    ), status


@bp.get("/security")
@login_required
def security():  # type: ignore[no-untyped-def]
    return _page()


@bp.post("/security/two-factor/start")
@login_required
def two_factor_start():  # type: ignore[no-untyped-def]
    try:
        two_factor.start_enrolment(current_user)
    except two_factor.TwoFactorError as exc:
        flash(str(exc), "error")
    return go_to(url_for("settings.security") + "#two-factor")


@bp.post("/security/two-factor/confirm")
@login_required
@code_limited
def two_factor_confirm():  # type: ignore[no-untyped-def]
    try:
        codes = two_factor.confirm_enrolment(current_user, request.form.get("code"))
    except two_factor.TwoFactorError as exc:
        return _page(422, errors={"code": str(exc)})
    return _page(recovery_codes=codes, message="Two-factor login is on.")


@bp.post("/security/two-factor/recovery-codes")
@login_required
@code_limited
def recovery_codes():  # type: ignore[no-untyped-def]
    try:
        codes = two_factor.regenerate_recovery_codes(current_user, request.form.get("code"))
    except two_factor.TwoFactorError as exc:
        return _page(422, errors={"regenerate_code": str(exc)})
    return _page(recovery_codes=codes, message="New recovery codes made: the old ones no longer work.")


@bp.post("/security/two-factor/disable")
@login_required
@code_limited
def two_factor_disable():  # type: ignore[no-untyped-def]
    try:
        two_factor.disable(current_user, request.form.get("code"), current_app.config["ADMIN_TWO_FACTOR_REQUIRED"])
    except two_factor.TwoFactorError as exc:
        return _page(422, errors={"disable_code": str(exc)})
    flash("Two-factor login is off. Your recovery codes no longer work.", "success")
    return go_to(url_for("settings.security"))


@bp.post("/security/api-keys")
@login_required
def api_key_create():  # type: ignore[no-untyped-def]
    try:
        row, key = api_keys.create(current_user, request.form.get("name"))
    except ValidationFailed as exc:
        return _page(422, errors=exc.fields, form=request.form)
    return _page(new_key=key, new_key_row=row)


@bp.post("/security/api-keys/<int:key_id>/revoke")
@login_required
def api_key_revoke(key_id: int):  # type: ignore[no-untyped-def]
    row = api_keys.revoke(current_user.id, key_id)
    if row is None:
        abort(404)
    flash(f"API key “{row.name}” ({api_keys.KEY_PREFIX}{row.prefix}…) revoked: it no longer works.", "success")
    return go_to(url_for("settings.security") + "#api-keys")
