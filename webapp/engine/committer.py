"""Group commit of order results. Hundreds of orders finish within the same second of the 09:15 herd; one
SQLite transaction each, from hundreds of threads, spends its time in SQLite's busy-wait sleeps (measured:
a result waited 0.9 s at p50, 8 s at worst, behind the others). One thread per process commits every
result handed to it since its last commit, in one transaction: each strategy still has its new state
committed the moment its own order is final, a few milliseconds later at most, and the order row is
written only where its holder is still the one recording (the claim's compare-and-set), with its
strategy's state in the same transaction."""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Flask
from sqlalchemy import bindparam, insert, update

from webapp import process_local
from webapp.extensions import db
from webapp.models import Notification, OrderLog, Strategy

log = logging.getLogger("engine.committer")

# What the engine changes on a strategy and on an order row when an order is final.
STRATEGY_RESULT = ("status", "position", "entry_price", "exit_price", "stop_price", "target_price", "last_action",
                   "status_reason", "needs_attention")
# Pauses between tries of a group's transaction (a database restart, SQLite's busy timeout). Past the last,
# each order thread fails its event as "position unknown"; its claimed row lets recovery find the order.
RETRIES = (0.2, 1.0, 3.0, None)
ROW_RESULT = ("broker_order_id", "status", "filled_quantity", "price", "error")
# Built once with bound parameters: compiling a statement per result cost more than the writes themselves.
_ROW = update(OrderLog).where(OrderLog.id == bindparam("row_id"), OrderLog.holder == bindparam("claim_holder")) \
    .values({name: bindparam(f"new_{name}") for name in ROW_RESULT})
_STRATEGY = update(Strategy).where(Strategy.id == bindparam("strategy_id")) \
    .values({name: bindparam(f"new_{name}") for name in STRATEGY_RESULT})


@dataclass
class Result:
    row_id: int
    holder: str
    row_values: dict
    strategy_id: int
    strategy_values: dict
    notices: list[dict] = field(default_factory=list)  # notification rows told with this result
    context: Any = None  # the caller's, handed back to on_committed
    done: threading.Event = field(default_factory=threading.Event)
    recorded: bool = False
    error: BaseException | None = None


class Committer:
    def __init__(self, app: Flask, on_committed: Callable[[list[Result]], None]) -> None:
        """on_committed: what follows a group's commit, for its recorded results, before their threads go
        on (the engine publishes the runtime state and gives the locks back, for the group at once)."""
        self.app = app
        self.on_committed = on_committed
        self.pending: queue.SimpleQueue[Result] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="committer", daemon=True).start()

    def commit(self, result: Result) -> bool:
        """Blocks until the result's transaction committed. False: another holder owns the row now, and
        nothing of this result was written."""
        self.pending.put(result)
        result.done.wait()
        if result.error is not None:
            raise result.error
        return result.recorded

    def _run(self) -> None:
        while True:
            group = [self.pending.get()]
            while not self.pending.empty():
                group.append(self.pending.get())
            with self.app.app_context():
                for pause in RETRIES:
                    try:
                        self._write(group)
                        break
                    except Exception as exc:  # noqa: BLE001 — a filled order's record is worth another try
                        if pause is None:
                            log.exception("group commit failed", extra={"event": "commit_failed",
                                                                         "results": len(group)})
                            for result in group:
                                result.recorded, result.error = False, exc
                        else:
                            log.warning("group commit failed, retrying", extra={"error": str(exc)})
                            time.sleep(pause)
                db.session.remove()
                recorded = [result for result in group if result.recorded and result.error is None]
                if recorded:
                    try:
                        self.on_committed(recorded)
                    except Exception:  # noqa: BLE001 — committed is committed; recovery rebuilds what follows
                        log.exception("after-commit step failed", extra={"event": "after_commit_failed"})
            for result in group:
                result.done.set()

    @staticmethod
    def _write(group: list[Result]) -> None:
        with db.engine.begin() as conn:
            for result in group:
                changed = conn.execute(_ROW, {"row_id": result.row_id, "claim_holder": result.holder,
                                              **{f"new_{k}": v for k, v in result.row_values.items()}})
                result.recorded = changed.rowcount == 1
                if result.recorded:
                    conn.execute(_STRATEGY, {"strategy_id": result.strategy_id,
                                             **{f"new_{k}": v for k, v in result.strategy_values.items()}})
                    if result.notices:
                        conn.execute(insert(Notification), result.notices)


def committer(app: Flask, on_committed: Callable[[list[Result]], None]) -> Committer:
    return process_local.one(("committer", id(app)), lambda: Committer(app, on_committed))
