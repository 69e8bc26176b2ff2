"""Live updates to browsers over Socket.IO. Web processes serve the sockets; any process (workers, the
listener, every web process) emits through the Redis message queue. A browser joins only its own user's
room, decided here from the login session, never from anything the client sends."""
from __future__ import annotations

import json
import logging
import queue
import threading
import uuid

from flask import Flask, current_app
from flask_login import current_user
from flask_socketio import SocketIO, join_room

from webapp import keys, redis_client
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


_outboxes: dict[str, queue.SimpleQueue] = {}
_outboxes_guard = threading.Lock()
BATCH_MAX = 1000  # messages published in one round trip


def _outbox(url: str) -> queue.SimpleQueue:
    """One outbox per process (items: lists of (event, room, payload)), emptied by one thread: an order thread must never wait on a browser push, and
    Socket.IO's own Redis emitter is not made for hundreds of threads at once (measured at 09:15: it
    reconnected over and over, and opening each connection cost milliseconds of CPU)."""
    with _outboxes_guard:
        if url not in _outboxes:
            _outboxes[url] = queue.SimpleQueue()
            threading.Thread(target=_send, args=(url, _outboxes[url]), name="live-push", daemon=True).start()
        return _outboxes[url]


def _message(event: str, room: str, payload: dict, host_id: str) -> str:
    """What python-socketio's PubSubManager.emit publishes for one emit without callback or binary data (its
    hosts' wire format, pinned with the package): every web process's manager hands it to its room's
    sockets."""
    return json.dumps({"method": "emit", "event": event, "data": [payload], "binary": False, "namespace": "/",
                       "room": room, "skip_sid": None, "callback": None, "host_id": host_id})


def _send(url: str, outbox: queue.SimpleQueue) -> None:
    """Everything waiting goes in one pipelined round trip: a price push is one message per user, and
    emitting 200 one by one (~1.2 ms each) kept the last user waiting ~250 ms behind the first."""
    conn, host_id, channel = redis_client.connect(url), uuid.uuid4().hex, _channel()
    while True:
        batch = list(outbox.get())
        while len(batch) < BATCH_MAX:
            try:
                batch.extend(outbox.get_nowait())
            except queue.Empty:
                break
        try:
            pipe = conn.pipeline(transaction=False)
            for event, room, payload in batch:
                pipe.publish(channel, _message(event, room, payload, host_id))
            pipe.execute()
        except Exception:  # noqa: BLE001 — best effort: a browser that misses this still polls within 5 s
            log.exception("live update not sent", extra={"event": "live_push_failed", "messages": len(batch)})


def warm_up() -> None:
    _outbox(current_app.config["REDIS_URL"])


def notify(strategies: list[Strategy]) -> None:
    """Best effort, and never blocking: a browser that misses this still polls within 5 s."""
    _outbox(current_app.config["REDIS_URL"]).put([
        ("runtime", user_room(strategy.user_id), {"strategy_id": strategy.id, "status": strategy.status,
                                                  "position": strategy.position}) for strategy in strategies])


def push_prices(redis_url: str, at: float, by_user: dict[int, dict[str, float]]) -> None:
    """Each user's browsers get the last prices of the instruments their running strategies trade
    ("EXCHANGE:SYMBOL" → price, `at` the exchange clock's epoch seconds): pages mark P&L and grow the chart
    from them without asking. Best effort, never blocking: a browser that misses one has the next."""
    # One item: the sender publishes a push to every user in one round trip, not as many as it wakes for.
    _outbox(redis_url).put([("prices", user_room(user_id), {"t": at, "prices": prices})
                            for user_id, prices in by_user.items()])
