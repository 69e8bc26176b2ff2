"""Cross-cutting HTTP behaviour: error pages (HTML or JSON by path), security headers, HTMX helpers."""
from __future__ import annotations

import logging
from collections.abc import Iterable

from flask import Flask, Response, jsonify, redirect, render_template, request
from flask_wtf.csrf import CSRFError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from webapp.services.errors import ValidationFailed

log = logging.getLogger(__name__)

ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_FAILED",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "ENGINE_UNAVAILABLE",
}


def wants_json() -> bool:
    return request.path.startswith("/api/")


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def json_error(status: int, message: str, code: str | None = None, **extra: object) -> tuple[Response, int]:
    return jsonify(error=code or ERROR_CODES.get(status, "ERROR"), message=message, **extra), status


def csv_attachment(export: tuple[str | Iterable[str], str]) -> Response:
    """A (CSV text, file name) as a download: UTF-8, never cached (it holds a trader's orders). The text may
    be an iterable of chunks, streamed (the audit log)."""
    body, filename = export
    data = body.encode("utf-8") if isinstance(body, str) else (chunk.encode("utf-8") for chunk in body)
    response = Response(data, content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def go_to(url: str) -> Response:
    """After a successful form post: HTMX follows HX-Redirect; a plain browser follows a 303."""
    if is_htmx():
        response = Response(status=204)
        response.headers["HX-Redirect"] = url
        return response
    return redirect(url, code=303)


def _message_for(error: HTTPException) -> str:
    if error.code == 429:
        return f"Too many attempts. Try again in a minute ({error.description})."
    if error.code == 404:
        return "Not found."
    return error.description or error.name


def _handle_http_error(error: HTTPException):  # type: ignore[no-untyped-def]
    status = error.code or 500
    if isinstance(error, CSRFError):
        message = "Your form expired or came from another site. Reload the page and try again."
    else:
        message = _message_for(error)
    if wants_json():
        response = json_error(status, message)[0]
    else:
        response = Response(render_template("error.html", status=status, message=message))
    response.status_code = status
    if status == 429 and error.response is not None and error.response.headers.get("Retry-After"):
        response.headers["Retry-After"] = error.response.headers["Retry-After"]
    return response


def _handle_redis_down(error: RedisError):  # type: ignore[no-untyped-def]
    """Redis (the engine's queues and live state) is not answering: a clear 503, never a 500."""
    logging.getLogger("web").error("engine unavailable", extra={"event": "engine_unavailable", "path": request.path,
                                                                 "error": str(error)})
    message = "The trading engine is unavailable right now; nothing was changed. Try again shortly."
    if wants_json():
        response = json_error(503, message)[0]
    else:
        response = Response(render_template("error.html", status=503, message=message))
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def _handle_unexpected(error: Exception):  # type: ignore[no-untyped-def]
    if isinstance(error, HTTPException):
        return _handle_http_error(error)
    log.exception("unhandled error", extra={"event": "http_500", "path": request.path})
    if wants_json():
        return json_error(500, "Something went wrong on our side; it has been logged.")
    return render_template("error.html", status=500, message="Something went wrong on our side."), 500


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'",
    )
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


def _handle_validation(error: ValidationFailed):  # type: ignore[no-untyped-def]
    """A ValidationFailed no view caught (a refused request body): 422 with the fields."""
    if wants_json():
        return json_error(422, "Some fields are not valid.", fields=error.fields)
    return render_template("error.html", status=422, message=str(error)), 422


def init_app(app: Flask) -> None:
    app.register_error_handler(ValidationFailed, _handle_validation)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(RedisError, _handle_redis_down)
    app.register_error_handler(Exception, _handle_unexpected)
    app.after_request(_security_headers)
