"""The admin kill switch: stop every running strategy in scope (squaring off through the engine, on the
priority queue), refuse new STARTs until released, and audit who, when, why and what it did."""
from __future__ import annotations

import logging

from sqlalchemy import select

from webapp import clock, redis_client
from webapp.engine import dispatch
from webapp.engine.events import KILL, Event
from webapp.extensions import db
from webapp.models import AuditEvent, KillSwitch, Strategy, User
from webapp.state_machine import RUNNING

log = logging.getLogger("admin.kill_switch")
CONFIRMATION = "KILL"


class NotConfirmed(Exception):
    pass


def engage(admin: User, user_id: int | None, reason: str, confirmation: str) -> int:
    """Returns how many running strategies were sent a KILL."""
    if confirmation.strip() != CONFIRMATION:
        raise NotConfirmed(f'Type {CONFIRMATION} to confirm.')
    if not reason.strip():
        raise NotConfirmed("Give a reason: it is recorded with the switch.")
    switch = KillSwitch(user_id=user_id, reason=reason.strip()[:255], engaged_by=admin.id)
    db.session.add(switch)
    db.session.commit()  # from here no START passes, before any KILL goes out
    query = select(Strategy).where(Strategy.status.in_([s.value for s in RUNNING]))
    if user_id is not None:
        query = query.where(Strategy.user_id == user_id)
    running = list(db.session.scalars(query))
    events = [Event.for_run(KILL, s.id, s.run_id) for s in running]
    conn = redis_client.current()
    for batch in dispatch.batches(events, dispatch.live_workers(conn)):
        dispatch.enqueue(conn, batch)
    in_position = sum(1 for s in running if s.position)
    db.session.add(AuditEvent(actor_user_id=admin.id, subject_user_id=user_id, action="kill_switch_engaged",
                              severity="critical", detail={"scope": "global" if user_id is None else "user",
                                                           "reason": switch.reason, "strategies": len(running),
                                                           "in_position": in_position, "switch_id": switch.id}))
    db.session.commit()
    log.critical("kill switch engaged", extra={"event": KILL, "user_id": user_id, "admin_id": admin.id,
                                               "reason": switch.reason, "strategies": len(running)})
    return len(running)


def release(admin: User, switch_id: int) -> KillSwitch | None:
    switch = db.session.get(KillSwitch, switch_id)
    if switch is None or switch.released_at is not None:
        return None
    switch.released_at, switch.released_by = clock.now(), admin.id
    db.session.add(AuditEvent(actor_user_id=admin.id, subject_user_id=switch.user_id, action="kill_switch_released",
                              detail={"switch_id": switch.id, "reason": switch.reason}))
    db.session.commit()
    log.warning("kill switch released", extra={"event": "kill_switch_released", "admin_id": admin.id,
                                               "switch_id": switch.id})
    return switch
