"""The admin kill switch: stop every running strategy in scope (squaring off through the engine, on the
priority queue), refuse new STARTs until released, and audit who, when, why and what it did."""
from __future__ import annotations

import logging

from sqlalchemy import select

from webapp import clock, redis_client
from webapp.engine import dispatch, notices
from webapp.engine.events import KILL, Event
from webapp.extensions import db
from webapp.market_calendar import IST
from webapp.models import AuditEvent, KillSwitch, Notification, Strategy, User
from webapp.state_machine import RUNNING

log = logging.getLogger("admin.kill_switch")
CONFIRMATION = "KILL"
REASON_MAX = 200  # traders read it in a banner on every page: one or two lines, never an essay


class NotConfirmed(Exception):
    pass


class AlreadyEngaged(NotConfirmed):
    """A switch with the same scope is engaged already. Refused rather than merged: the engaged switch already
    stops everything in that scope and refuses every START, so a second adds nothing but a second release an
    admin must remember; and merging would rewrite a reason traders have already read and the audit recorded.
    To change the reason, release and engage again."""


def clean_reason(reason: str) -> str:
    """One line, no runs of spaces: a pasted newline or tab must not break the traders' banner."""
    return " ".join(reason.split())


def _same_scope(user_id: int | None) -> list[KillSwitch]:
    query = select(KillSwitch).where(KillSwitch.released_at.is_(None))
    query = query.where(KillSwitch.user_id.is_(None) if user_id is None else KillSwitch.user_id == user_id)
    return list(db.session.scalars(query.order_by(KillSwitch.id)))


def _refusal(engaged: KillSwitch) -> AlreadyEngaged:
    scope = "A global kill switch" if engaged.user_id is None else f"A kill switch for user {engaged.user_id}"
    since = engaged.engaged_at.astimezone(IST).strftime("%d %b %Y %H:%M:%S IST")
    return AlreadyEngaged(f"{scope} is already engaged (since {since}, reason: {engaged.reason}). "
                          "Release it first to engage one with a new reason.")


def engage(admin: User, user_id: int | None, reason: str, confirmation: str) -> int:
    """Returns how many running strategies were sent a KILL."""
    if confirmation.strip() != CONFIRMATION:
        raise NotConfirmed(f'Type {CONFIRMATION} to confirm.')
    reason = clean_reason(reason)
    if not reason:
        raise NotConfirmed("Give a reason: it is recorded with the switch.")
    if len(reason) > REASON_MAX:
        raise NotConfirmed(f"Keep the reason to {REASON_MAX} characters (it has {len(reason)}): traders see it "
                           "on every page.")
    engaged = _same_scope(user_id)
    if engaged:
        raise _refusal(engaged[0])
    switch = KillSwitch(user_id=user_id, reason=reason, engaged_by=admin.id)
    db.session.add(switch)
    db.session.commit()  # from here no START passes, before any KILL goes out
    first = _same_scope(user_id)[0]
    if first.id != switch.id:  # another admin's switch landed between the check and this commit: theirs stands
        db.session.delete(switch)
        db.session.commit()
        raise _refusal(first)
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
    # Told to each trader it halts who had something running (a global switch does not message everyone).
    for told in sorted({s.user_id for s in running} | ({user_id} if user_id is not None else set())):
        db.session.add(Notification(**notices.row(notices.KILL_SWITCH, told, reason=switch.reason,
                                                  strategies=sum(1 for s in running if s.user_id == told))))
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
