"""Live updates to browsers over Socket.IO. Web processes serve the sockets; any process (workers, the
listener, every web process) emits through the Redis message queue. A browser joins only its own user's
room, decided here from the login session, never from anything the client sends."""
from __future__ import annotations

import logging
import threading

from flask import Flask, current_app
from flask_login import current_user
from flask_socketio import SocketIO, join_room

from webapp import keys
from webapp.models import Strategy

log = logging.getLogger("live")
socketio = SocketIO()


def _channel() -> str:
    return f"{keys.PREFIX}flask-socketio"


def user_room(user_id: int) -> str:
    return f"user:{user_id}"


def init_app(app: Flask) -> None:
    socketio.init_app(app, message_queue=app.config["REDIS_URL"], channel=_channel(), async_mode="threading",
                      cors_allowed_origins=[])  # same origin only

    @socketio.on("connect")
    def connect(_auth: object = None) -> bool:
        if not current_user.is_authenticated:
            return False  # refused: no room without a login session
        join_room(user_room(current_user.id))
        return True


_emitters: dict[str, SocketIO] = {}
_emitters_guard = threading.Lock()


def _emitter(url: str) -> SocketIO:
    """Write-only: publishes to the message queue for whichever web process holds the browser's socket.
    One per process, made under a lock: a worker's order threads all ask for it at once at 09:15."""
    with _emitters_guard:
        if url not in _emitters:
            _emitters[url] = SocketIO(message_queue=url, channel=_channel())
        return _emitters[url]


def warm_up() -> None:
    _emitter(current_app.config["REDIS_URL"])


def notify(strategies: list[Strategy]) -> None:
    """Best effort: a browser that misses this still polls within 5 s."""
    try:
        emitter = _emitter(current_app.config["REDIS_URL"])
        for strategy in strategies:
            emitter.emit("runtime", {"strategy_id": strategy.id, "status": strategy.status,
                                     "position": strategy.position}, to=user_room(strategy.user_id))
    except Exception:  # noqa: BLE001 — the live push must never fail an order's bookkeeping
        log.exception("live update not sent", extra={"event": "live_push_failed"})
