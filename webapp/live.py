"""Live updates to browsers over Socket.IO. Web processes serve the sockets; any process (workers, the
listener, every web process) emits through the Redis message queue. A browser joins only its own user's
room, decided here from the login session, never from anything the client sends."""
from __future__ import annotations

import logging
import queue
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
    # cors_allowed_origins left at None: Engine.IO then refuses a handshake whose Origin is not this host
    # (a cross-site page riding on the user's cookie). `[]` would turn that check off, not narrow it.
    socketio.init_app(app, message_queue=app.config["REDIS_URL"], channel=_channel(), async_mode="threading")

    @socketio.on("connect")
    def connect(_auth: object = None) -> bool:
        if not current_user.is_authenticated:
            return False  # refused: no room without a login session
        join_room(user_room(current_user.id))
        return True


_emitters: dict[str, SocketIO] = {}
_outboxes: dict[str, queue.SimpleQueue] = {}
_emitters_guard = threading.Lock()


def _outbox(url: str) -> queue.SimpleQueue:
    """One write-only emitter per process, fed by one thread: Socket.IO's Redis manager is not made for
    hundreds of order threads at once (measured at 09:15: it reconnected over and over, and opening each
    connection cost milliseconds of CPU), and an order thread must never wait on a browser push."""
    with _emitters_guard:
        if url not in _outboxes:
            _emitters[url] = SocketIO(message_queue=url, channel=_channel())
            _outboxes[url] = queue.SimpleQueue()
            threading.Thread(target=_send, args=(_emitters[url], _outboxes[url]), name="live-push",
                             daemon=True).start()
        return _outboxes[url]


def _send(emitter: SocketIO, outbox: queue.SimpleQueue) -> None:
    while True:
        event, room, payload = outbox.get()
        try:
            emitter.emit(event, payload, to=room)
        except Exception:  # noqa: BLE001 — best effort: a browser that misses this still polls within 5 s
            log.exception("live update not sent", extra={"event": "live_push_failed"})


def warm_up() -> None:
    _outbox(current_app.config["REDIS_URL"])


def notify(strategies: list[Strategy]) -> None:
    """Best effort, and never blocking: a browser that misses this still polls within 5 s."""
    outbox = _outbox(current_app.config["REDIS_URL"])
    for strategy in strategies:
        outbox.put(("runtime", user_room(strategy.user_id), {"strategy_id": strategy.id, "status": strategy.status,
                                                             "position": strategy.position}))


def push_prices(redis_url: str, at: float, by_user: dict[int, dict[str, float]]) -> None:
    """Each user's browsers get the last prices of the instruments their running strategies trade
    ("EXCHANGE:SYMBOL" → price, `at` the exchange clock's epoch seconds): pages mark P&L and grow the chart
    from them without asking. Best effort, never blocking: a browser that misses one has the next."""
    outbox = _outbox(redis_url)
    for user_id, prices in by_user.items():
        outbox.put(("prices", user_room(user_id), {"t": at, "prices": prices}))
