from __future__ import annotations

from flask import Blueprint, jsonify, redirect, url_for
from flask_login import current_user
from sqlalchemy import text

from webapp import redis_client
from webapp.extensions import db, limiter

bp = Blueprint("main", __name__)


@bp.get("/")
def index():  # type: ignore[no-untyped-def]
    return redirect(url_for("strategies.index" if current_user.is_authenticated else "auth.login"))


@bp.get("/healthz")
@limiter.exempt
def healthz():  # type: ignore[no-untyped-def]
    checks: dict[str, str] = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 — a health check reports every failure, whatever its type
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        redis_client.current().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "degraded", checks=checks), 200 if healthy else 503


@bp.get("/metrics")
@limiter.exempt
def metrics_endpoint():  # type: ignore[no-untyped-def]
    """Prometheus's scrape: every process's metrics (webapp/metrics.py). Without METRICS_TOKEN only from this
    machine (loopback); with it, only with "Authorization: Bearer <token>"; no session, no CSRF (a GET)."""
    import hmac
    from pathlib import Path

    from flask import Response, current_app, request

    from webapp import metrics

    import ipaddress

    token = current_app.config.get("METRICS_TOKEN") or ""
    if token and not hmac.compare_digest(request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()):
        return Response("a bearer token is required\n", 401, {"WWW-Authenticate": "Bearer"}, mimetype="text/plain")
    if not token and not ipaddress.ip_address(request.remote_addr or "0.0.0.0").is_loopback:
        # Open only to this machine: behind a public proxy the figures (and each scrape's queries) are no one
        # else's business.
        return Response("set METRICS_TOKEN to scrape from another machine\n", 403, mimetype="text/plain")
    path = Path(current_app.config["METRICS_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    body, content_type = metrics.exposition(str(path))
    return Response(body, content_type=content_type)
