"""Flask application factory."""
from __future__ import annotations

import logging

from flask import Flask

from webapp import logs
from webapp.config import ROOT, Config
from webapp.extensions import csrf, db, limiter, login_manager, migrate


def create_app(overrides: dict | None = None, process_name: str = "web") -> Flask:
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        instance_path=str(Config().INSTANCE_DIR),
    )
    app.config.from_mapping(Config().as_dict())
    app.config.from_mapping(overrides or {})
    if not app.config.get("TESTING"):
        logs.configure(process_name, app.config["LOG_LEVEL"])
    app.config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    from webapp.brokers import market_protection
    from webapp.market_calendar import parse_time

    app.config["MARKET_PROTECTION"] = market_protection(str(app.config["MARKET_PROTECTION"]))
    if parse_time(str(app.config["MIS_CUTOFF"])) is None:  # every MIS order would be judged by it
        raise ValueError(f"MIS_CUTOFF must be HH:MM or HH:MM:SS (IST), not {app.config['MIS_CUTOFF']!r}")
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # No pre-ping round trip for a file on this machine.
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {**app.config["SQLALCHEMY_ENGINE_OPTIONS"], "pool_pre_ping": False}

    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message_category = "info"
    csrf.init_app(app)
    limiter.init_app(app)

    from webapp import models  # noqa: F401  (models must be imported for migrations)
    from webapp.admin import bp as admin_bp
    from webapp.api import bp as api_bp
    from webapp.auth import bp as auth_bp
    from webapp.broker_pages import bp as broker_bp
    from webapp.main import bp as main_bp
    from webapp.notification_pages import bp as notifications_bp
    from webapp.settings import bp as settings_bp
    from webapp.strategies import bp as strategies_bp

    app.register_blueprint(main_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(broker_bp)
    app.register_blueprint(strategies_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(settings_bp)
    app.register_blueprint(notifications_bp)
    csrf.exempt(api_bp)  # the API checks CSRF itself, only for cookie-authenticated requests
    csrf.exempt(admin_bp)  # checked after the admin role, so non-admins see 404 everywhere

    from webapp import cli, http, live, money
    from webapp.market_calendar import IST

    from webapp.services.history import describe as status_words
    from webapp.strategies.terms_text import facts, pnl_attrs

    app.add_template_filter(lambda moment: moment.astimezone(IST).strftime("%H:%M:%S"), "ist")

    def ist_datetime(moment: object) -> str:
        """A moment (a datetime, or an ISO string as the health report and the account description carry) as
        "25 Nov 2026 14:31:05 IST"; naive values are UTC, as everything stored is."""
        from datetime import datetime as _datetime, timezone as _timezone
        if not moment:
            return "—"
        if isinstance(moment, str):
            try:
                moment = _datetime.fromisoformat(moment)
            except ValueError:
                return moment
        if not isinstance(moment, _datetime):
            return str(moment)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=_timezone.utc)
        return moment.astimezone(IST).strftime("%d %b %Y %H:%M:%S IST")

    app.add_template_filter(ist_datetime, "ist_datetime")
    app.add_template_global(facts, "strategy_facts")
    app.add_template_global(pnl_attrs, "pnl_attrs")
    app.add_template_global(status_words, "describe")  # a status code in the words a trader uses
    app.add_template_filter(money.inr, "inr")
    app.add_template_filter(money.percent, "percent")

    http.init_app(app)
    cli.init_app(app)
    if process_name == "web":
        live.init_app(app)

    @login_manager.user_loader
    def load_user(user_id: str) -> models.User | None:
        user = db.session.get(models.User, int(user_id))
        return user if user and not user.disabled else None

    logging.getLogger(__name__).debug("app created", extra={"event": "app_created"})
    return app
