"""Strategy locks (runtime:{id}:lock): one holder acts for a strategy at a time. A lock lives
LOCK_TIMEOUT_SECONDS unless renewed; this process renews every lock it holds every third of that, from
one thread, so a slow order keeps its lock and a dead worker's lock frees itself soon. Holding a lock is
not enough to send an order (a lock can be lost to a Redis wipe or a stalled process): the sender also
claims the event's intent row in the database (engine/orders.py) and checks the lock right before the
broker call."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis
from redis.client import Pipeline

from webapp import process_local, redis_client
from webapp.keys import runtime_lock

log = logging.getLogger("engine.locks")

# Compare-and-act: only the holder's token may renew or release.
_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then redis.call('PEXPIRE', key, ARGV[1]) else lost[#lost + 1] = i end
end
return lost
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(eq=False)
class Held:
    strategy_id: int
    token: str
    lost: threading.Event = field(default_factory=threading.Event)


class Locks:
    """The locks this process holds, renewed by one keeper thread."""

    def __init__(self, conn: redis.Redis, ttl_seconds: float) -> None:
        self.conn = conn
        self.ttl_ms = int(ttl_seconds * 1000)
        self.held: set[Held] = set()
        self.guard = threading.Lock()
        threading.Thread(target=self._keep, name="lock-keeper", daemon=True).start()

    def try_many(self, strategy_ids: list[int]) -> dict[int, Held]:
        """Takes every free lock of these in one round trip; busy ones are left out."""
        pipe = self.conn.pipeline(transaction=False)
        tokens = [uuid.uuid4().hex for _ in strategy_ids]
        for strategy_id, token in zip(strategy_ids, tokens):
            pipe.set(runtime_lock(strategy_id), token, nx=True, px=self.ttl_ms)
        taken = {sid: Held(sid, token) for sid, token, ok in zip(strategy_ids, tokens, pipe.execute()) if ok}
        with self.guard:
            self.held.update(taken.values())
        return taken

    def wait_for(self, strategy_id: int, timeout: float) -> Held | None:
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            found = self.try_many([strategy_id]).get(strategy_id)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def still_held(self, locks: list[Held]) -> list[bool]:
        """The fence before a broker call: is each lock still ours, right now (one round trip)?"""
        pipe = self.conn.pipeline(transaction=False)
        for held in locks:
            pipe.get(runtime_lock(held.strategy_id))
        mine = [value is not None and value.decode() == held.token for held, value in zip(locks, pipe.execute())]
        for held, ok in zip(locks, mine):
            if not ok:
                held.lost.set()
        return mine

    def release(self, held: Held) -> None:
        """Gives the lock back, unless it was already given back (release_in)."""
        with self.guard:
            if held not in self.held:
                return
            self.held.discard(held)
        try:
            if not redis_client.script(self.conn, _RELEASE)(keys=[runtime_lock(held.strategy_id)], args=[held.token],
                                                           client=self.conn):
                log.warning("strategy lock was lost before release", extra={"strategy_id": held.strategy_id})
        except redis.RedisError as exc:  # it expires by itself
            log.warning("strategy lock not released", extra={"strategy_id": held.strategy_id, "error": str(exc)})

    def release_in(self, pipe: Pipeline, held: Held) -> None:
        """Gives the lock back as part of the caller's pipeline; call released() once it has run."""
        redis_client.script(self.conn, _RELEASE)(keys=[runtime_lock(held.strategy_id)], args=[held.token], client=pipe)

    def released(self, held: list[Held]) -> None:
        with self.guard:
            self.held.difference_update(held)

    def _keep(self) -> None:
        while True:
            time.sleep(self.ttl_ms / 3000)
            with self.guard:
                held = list(self.held)
            if not held:
                continue
            try:
                lost = redis_client.script(self.conn, _RENEW)(
                    keys=[runtime_lock(h.strategy_id) for h in held], args=[self.ttl_ms, *(h.token for h in held)],
                    client=self.conn)
            except redis.RedisError as exc:
                log.warning("strategy locks not renewed", extra={"error": str(exc), "held": len(held)})
                continue
            with self.guard:
                lost_now = [held[index - 1] for index in lost if held[index - 1] in self.held]  # not released meanwhile
            for gone in lost_now:
                gone.lost.set()
                log.error("strategy lock lost while acting", extra={"strategy_id": gone.strategy_id})


def locks(conn: redis.Redis, ttl_seconds: float) -> Locks:
    return process_local.one(("locks", id(conn), ttl_seconds), lambda: Locks(conn, ttl_seconds))
