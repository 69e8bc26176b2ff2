"""RQ job functions. A worker process builds the Flask app once and runs every job inside a fresh app
context of it, so the engine sees the same settings, database and Redis as the web."""
from __future__ import annotations

from flask import Flask

from webapp import create_app
from webapp.engine import executor
from webapp.engine.events import Event
from webapp.extensions import db

_app: Flask | None = None


def app() -> Flask:
    global _app
    if _app is None:
        _app = create_app(process_name="worker")
    return _app


def handle_events(payloads: list[dict]) -> list[str]:
    with app().app_context():
        try:
            return executor.accept([Event.from_dict(payload) for payload in payloads])
        finally:
            db.session.remove()  # a long-lived worker must not carry one job's session into the next
