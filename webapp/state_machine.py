"""The strategy life cycle (DESIGN.md section 5). The one place that says which status may follow which,
and which event may act in which status."""
from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    CREATED = "created"
    WAITING_ENTRY = "waiting_entry"
    IN_POSITION = "in_position"
    COMPLETED = "completed"
    STOPPED_LOSS = "stopped_loss"
    TARGET_HIT = "target_hit"
    STOPPED = "stopped"
    FAILED = "failed"
    KILLED = "killed"


RUNNING = frozenset({Status.WAITING_ENTRY, Status.IN_POSITION})
TERMINAL = frozenset({Status.COMPLETED, Status.STOPPED_LOSS, Status.TARGET_HIT, Status.STOPPED, Status.FAILED,
                      Status.KILLED})

_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({Status.WAITING_ENTRY}),
    Status.WAITING_ENTRY: frozenset({Status.IN_POSITION, Status.STOPPED, Status.FAILED, Status.KILLED}),
    Status.IN_POSITION: frozenset(
        {Status.COMPLETED, Status.STOPPED_LOSS, Status.TARGET_HIT, Status.STOPPED, Status.FAILED, Status.KILLED}
    ),
    # A finished run may be started again on a later day.
    **{s: frozenset({Status.WAITING_ENTRY}) for s in TERMINAL},
}

# Which status an event may act in (anything else is logged and dropped). BUY and SELL name the triggers
# at buy_time and sell_time, the entry and the exit: a short strategy's BUY event places a SELL order.
EVENT_ACTS_IN: dict[str, frozenset[Status]] = {
    "BUY": frozenset({Status.WAITING_ENTRY}),
    "SELL": frozenset({Status.IN_POSITION}),
    "STOPLOSS": frozenset({Status.IN_POSITION}),
    "TARGET": frozenset({Status.IN_POSITION}),
    "STOP": RUNNING,
    "KILL": RUNNING,
    "FAIL": RUNNING,  # e.g. the feed cannot subscribe the symbol: no order, the run ends as failed
}


def can_transition(current: Status | str, target: Status | str) -> bool:
    return Status(target) in _TRANSITIONS[Status(current)]


def is_running(status: Status | str) -> bool:
    return Status(status) in RUNNING


def is_editable(status: Status | str) -> bool:
    """A strategy may be edited or deleted only while nothing is scheduled or held for it."""
    return not is_running(status)


def event_may_act(event: str, status: Status | str) -> bool:
    return Status(status) in EVENT_ACTS_IN.get(event, frozenset())
