"""Order updates pushed by the broker (Kite postbacks, the ticker's order frames, the paper exchange's
fills) reach the engine's waiting threads here. Every update is stored (the latest per order, so a waiter
that starts after it arrived still sees it) and published on one channel; each worker process runs one
subscriber thread that wakes the thread waiting for that order. Polling the broker stays the fallback
for an update that never comes."""
from __future__ import annotations

import json
import logging
import threading
import time

import redis

from webapp import keys, process_local
from webapp.brokers.base import OrderState

log = logging.getLogger("brokers.updates")
UPDATE_TTL_SECONDS = 24 * 3600


def publish(conn: redis.Redis, state: OrderState) -> None:
    publish_many(conn, [state])


def publish_many(conn: redis.Redis, states: list[OrderState]) -> None:
    pipe = conn.pipeline(transaction=False)
    for state in states:
        payload = json.dumps(state.to_dict())
        pipe.set(keys.order_update(state.order_id), payload, ex=UPDATE_TTL_SECONDS)
        pipe.publish(keys.ORDER_UPDATES, payload)
    pipe.execute()


def latest(conn: redis.Redis, order_id: str) -> OrderState | None:
    raw = conn.get(keys.order_update(order_id))
    return OrderState.from_dict(json.loads(raw)) if raw else None


class Waiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.state: OrderState | None = None

    def offer(self, state: OrderState) -> None:
        # An older interim update never replaces a final one (pushes can arrive out of order).
        if self.state is None or not self.state.final:
            self.state = state
        if state.final:
            self.event.set()


class Watch:
    """One per process: the subscriber thread and the threads waiting for their orders."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.waiters: dict[str, Waiter] = {}
        self.guard = threading.Lock()
        self.last_push = float("-inf")
        threading.Thread(target=self._listen, name="order-updates", daemon=True).start()

    def expect(self, order_id: str) -> Waiter:
        with self.guard:
            waiter = self.waiters.setdefault(order_id, Waiter())
        try:
            stored = latest(self.conn, order_id)  # pushed before we started waiting
        except redis.RedisError:
            stored = None  # the broker is polled instead: an order sent is never given up for Redis
        if stored is not None:
            waiter.offer(stored)
        return waiter

    def done(self, order_id: str) -> None:
        with self.guard:
            self.waiters.pop(order_id, None)

    def pushes_flowing(self, within: float = 600.0) -> bool:
        """Whether this process has seen pushed updates lately: then a missing one is worth waiting for
        before polling the broker, which spends the account's request budget."""
        return time.monotonic() - self.last_push < within

    def _listen(self) -> None:
        pause = 0.5
        while True:
            try:
                pubsub = self.conn.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.ORDER_UPDATES)
                pause = 0.5
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._deliver(OrderState.from_dict(json.loads(message["data"])))
            except redis.RedisError as exc:  # an outage: waiters fall back to polling meanwhile
                log.warning("order update subscription lost", extra={"event": "order_updates_lost",
                                                                     "error": str(exc)})
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    def _deliver(self, state: OrderState) -> None:
        self.last_push = time.monotonic()
        with self.guard:
            waiter = self.waiters.get(state.order_id)
        if waiter is not None:
            waiter.offer(state)


def watch(conn: redis.Redis) -> Watch:
    return process_local.one(("order-updates", id(conn)), lambda: Watch(conn))
