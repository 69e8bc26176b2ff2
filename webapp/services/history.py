"""A strategy's run history: each run's entry and exit (from what the broker filled), its P&L and how it
ended, the realised total and the equity curve, and the CSV exports of runs and of orders.

Two queries for a whole strategy, however many runs: its runs, and its orders (every order names its run
at the end of its event id, "12:BUY:34"). A finished run's outcome is on its Run row (written by
lifecycle.close_run when the next run begins); the current run's is still in the strategy's own columns."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import select

from webapp.engine import exits
from webapp.engine.executor import EXIT_STATUS
from webapp.extensions import db
from webapp.market_calendar import IST
from webapp.models import OrderLog, Run, Strategy
from webapp.services import status as status_service
from webapp.services.status import fills_pnl, open_quantity
from webapp.state_machine import is_running

PAISE = Decimal("0.01")
SKIPPED = "skipped"  # a day of a recurring strategy that never ran (Run.status, with its reason)

# How a run ended, in the words a trader uses (the status codes stay in the API and the CSV).
STATUS_WORDS = {
    "created": "Not started",
    "waiting_entry": "Waiting to enter",
    "in_position": "In position",
    "completed": "Squared off at sell time",
    "stopped_loss": "Stop-loss hit",
    "target_hit": "Target hit",
    "stopped": "Stopped by you",
    "failed": "Failed",
    "killed": "Halted by the admin",
    SKIPPED: "Skipped",
}
# A run closed before runs kept their outcome: its last filled exit says how it ended.
_EXIT_STATUS = {event: status.value for event, status in EXIT_STATUS.items()}


@dataclass
class RunRow:
    run_id: int
    run_date: str  # IST trading day
    started_at: datetime
    direction: str
    status: str | None  # None: an old run whose outcome was never recorded and cannot be inferred
    reason: str | None
    current: bool  # the strategy's latest run (its outcome still in the strategy's columns)
    in_progress: bool  # current and still running
    entry_quantity: int  # filled on the entry side (BUY when long, SELL when short)
    entry_price: Decimal | None  # average fill price of the entry
    exit_quantity: int
    exit_price: Decimal | None
    open_quantity: int  # entered and not yet exited, per the fills
    last_price: Decimal | None  # what an open position is marked at (in-progress runs only)
    pnl: Decimal | None  # rupees; None when nothing was entered or an open position cannot be valued
    pnl_percent: Decimal | None  # of the entry value
    realised: bool  # the position is closed: this P&L counts in the total and the equity curve
    cumulative_pnl: Decimal  # realised P&L of every run up to and including this one
    stop_price: Decimal | None
    target_price: Decimal | None
    orders: int  # order rows of the run, every attempt included

    @property
    def status_text(self) -> str:
        return describe(self.status)

    @property
    def skipped(self) -> bool:
        return self.status == SKIPPED


def describe(status: str | None) -> str:
    return STATUS_WORDS.get(status or "", "Ended" if status is None else status.replace("_", " ").capitalize())


def run_of(event_id: str) -> int | None:
    """The run an order belongs to: the number after the event id's last colon."""
    tail = event_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def _paise(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(PAISE, rounding=ROUND_HALF_UP)


def _average(rows: list[OrderLog]) -> tuple[int, Decimal | None]:
    quantity = sum(row.filled_quantity for row in rows)
    if not quantity:
        return 0, None
    return quantity, _paise(sum((row.price * row.filled_quantity for row in rows), Decimal(0)) / quantity)


def _orders(strategy: Strategy) -> list[OrderLog]:
    return list(db.session.scalars(select(OrderLog).where(OrderLog.strategy_id == strategy.id)
                                   .order_by(OrderLog.id)))


def runs(strategy: Strategy, price: Decimal | str | None = None,
         orders: list[OrderLog] | None = None) -> list[RunRow]:
    """Every run of the strategy, oldest first (by run date, then as recorded), skipped days included.
    `price`, the last price, marks the current run's open position (its P&L is then unrealised); `orders`,
    every order row of the strategy when the caller already holds them, saves the second query."""
    found = list(db.session.scalars(select(Run).where(Run.strategy_id == strategy.id)
                                    .order_by(Run.run_date, Run.id)))
    by_run: dict[int, list[OrderLog]] = {}
    for row in _orders(strategy) if orders is None else orders:
        run_id = run_of(row.event_id)
        if run_id is not None:
            by_run.setdefault(run_id, []).append(row)
    mark = Decimal(str(price)) if price not in (None, "") else None
    total = Decimal(0)
    rows = []
    for run in found:
        row = _row(strategy, run, by_run.get(run.id, []), mark)
        if row.realised and row.pnl is not None:
            total += row.pnl
        row.cumulative_pnl = total
        rows.append(row)
    return rows


def _row(strategy: Strategy, run: Run, orders: list[OrderLog], last_price: Decimal | None) -> RunRow:
    current = run.id == strategy.run_id
    filled = [row for row in orders if row.filled_quantity and row.price is not None]
    entry_side = exits.entry_side(run.direction)
    entry_quantity, entry_price = _average([row for row in filled if row.side == entry_side])
    exit_quantity, exit_price = _average([row for row in filled if row.side != entry_side])
    held = open_quantity(filled, run.direction)
    in_progress = current and is_running(strategy.status)

    if run.status is not None:
        status, reason, stop, target = run.status, run.reason, run.stop_price, run.target_price
    elif current:
        status, reason, stop, target = (strategy.status, strategy.status_reason, strategy.stop_price,
                                        strategy.target_price)
    else:
        exited = [row.event for row in filled if row.side != entry_side and row.event in _EXIT_STATUS]
        status = _EXIT_STATUS[exited[-1]] if exited and not held else None
        reason, stop, target = None, run.stop_price, run.target_price

    # P&L from the fills (status.fills_pnl, either direction): a closed position is realised; an open one
    # only has a value while its run is in progress and a last price is known. A position left open by a
    # run that has ended (flagged, acknowledged, squared off by the broker) has no P&L we can vouch for.
    pnl = percent = None
    realised = False
    mark = last_price if in_progress and held else None
    if entry_quantity and (not held or mark is not None):
        pnl, percent = fills_pnl(filled, run.direction, held, mark)
        realised = not held
    return RunRow(
        run_id=run.id, run_date=run.run_date, started_at=run.started_at, direction=run.direction, status=status,
        reason=reason, current=current, in_progress=in_progress, entry_quantity=entry_quantity,
        entry_price=entry_price, exit_quantity=exit_quantity, exit_price=exit_price, open_quantity=held,
        last_price=_paise(mark), pnl=_paise(pnl), pnl_percent=_paise(percent), realised=realised,
        cumulative_pnl=Decimal(0), stop_price=stop, target_price=target, orders=len(orders))


def summary(rows: list[RunRow]) -> dict:
    realised = [row.pnl for row in rows if row.realised and row.pnl is not None]
    unrealised = [row.pnl for row in rows if not row.realised and row.pnl is not None]
    return {
        "runs": sum(1 for row in rows if not row.skipped),
        "skipped": sum(1 for row in rows if row.skipped),
        "traded": sum(1 for row in rows if row.entry_quantity),
        "wins": sum(1 for pnl in realised if pnl > 0),
        "losses": sum(1 for pnl in realised if pnl < 0),
        "realised_pnl": sum(realised, Decimal(0)).quantize(PAISE),
        "unrealised_pnl": _paise(sum(unrealised, Decimal(0))) if unrealised else None,
    }


def equity(rows: list[RunRow]) -> list[dict]:
    """The equity curve: cumulative realised P&L after each run that closed a position, by run date."""
    return [{"run_id": row.run_id, "run_date": row.run_date, "pnl": _money(row.pnl),
             "cumulative_pnl": _money(row.cumulative_pnl)} for row in rows if row.realised]


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(_paise(value))


def run_to_dict(row: RunRow) -> dict:
    return {
        "run_id": row.run_id, "run_date": row.run_date, "started_at": row.started_at.isoformat(),
        "direction": row.direction, "status": row.status, "status_text": row.status_text, "reason": row.reason,
        "current": row.current, "in_progress": row.in_progress,
        "entry_quantity": row.entry_quantity, "entry_price": _money(row.entry_price),
        "exit_quantity": row.exit_quantity, "exit_price": _money(row.exit_price),
        "open_quantity": row.open_quantity, "last_price": _money(row.last_price),
        "pnl": _money(row.pnl), "pnl_percent": _money(row.pnl_percent), "realised": row.realised,
        "cumulative_pnl": _money(row.cumulative_pnl),
        "stop_price": _money(row.stop_price), "target_price": _money(row.target_price), "orders": row.orders,
    }


def to_json(strategy: Strategy, rows: list[RunRow]) -> dict:
    totals = summary(rows)
    return {"strategy_id": strategy.id, "runs": [run_to_dict(row) for row in rows],
            "summary": {**totals, "realised_pnl": _money(totals["realised_pnl"]),
                        "unrealised_pnl": _money(totals["unrealised_pnl"])},
            "equity": equity(rows)}


# CSV: plain decimals (no ₹, no grouping) so spreadsheets read numbers as numbers; times in IST.
RUN_COLUMNS = ("run_id", "run_date", "started_at_ist", "direction", "status", "status_text", "reason",
               "entry_quantity", "entry_price", "exit_quantity", "exit_price", "open_quantity", "pnl",
               "pnl_percent", "realised", "cumulative_pnl", "stop_price", "target_price", "in_progress")
ORDER_COLUMNS = ("date_ist", "time_ist", "run_id", "event", "side", "quantity", "filled_quantity",
                 "average_price", "broker_order_id", "tag", "status", "attempt", "error", "event_id")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str | None) -> str:
    """A text cell a spreadsheet will not run as a formula (a broker's message could start with '=')."""
    if not value:
        return ""
    return "'" + value if value.startswith(_FORMULA) else value


def _ist(moment: datetime) -> datetime:
    return moment.astimezone(IST)


def _csv(header: tuple[str, ...], lines: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(["" if cell is None else cell for cell in line] for line in lines)
    return out.getvalue()


def runs_csv(rows: list[RunRow]) -> str:
    return _csv(RUN_COLUMNS, [[
        row.run_id, row.run_date, _ist(row.started_at).strftime("%Y-%m-%d %H:%M:%S"), row.direction, row.status,
        row.status_text, _text(row.reason), row.entry_quantity, _money(row.entry_price), row.exit_quantity,
        _money(row.exit_price), row.open_quantity, _money(row.pnl), _money(row.pnl_percent),
        "yes" if row.realised else "no", _money(row.cumulative_pnl), _money(row.stop_price),
        _money(row.target_price), "yes" if row.in_progress else "no",
    ] for row in rows])


def orders_csv(strategy: Strategy) -> str:
    """Every order row of the strategy, oldest first: for tax, and to check against the broker's contract
    notes (the tag and the broker's order id are the same as on the broker's side)."""
    lines = []
    for row in _orders(strategy):
        at = _ist(row.created_at)
        lines.append([at.strftime("%Y-%m-%d"), at.strftime("%H:%M:%S"), run_of(row.event_id), row.event, row.side,
                      row.quantity, row.filled_quantity, _money(row.price), _text(row.broker_order_id),
                      _text(row.tag), row.status, row.attempt, _text(row.error), row.event_id])
    return _csv(ORDER_COLUMNS, lines)


def last_price(state: dict) -> str | None:
    """The current run's open position is marked at the last price (status.for_page) only while it runs."""
    return state.get("last_price") if state.get("status") in ("waiting_entry", "in_position") else None


def mark(strategy: Strategy) -> str | None:
    """The last price of a running strategy (Redis; no query when it answers), None otherwise."""
    return last_price(status_service.for_page(strategy)) if is_running(strategy.status) else None


def payload(strategy: Strategy) -> dict:
    """The runs JSON of the page and of the API."""
    return to_json(strategy, runs(strategy, mark(strategy)))


def runs_export(strategy: Strategy) -> tuple[str, str]:
    """(CSV text, file name) of the strategy's runs."""
    return runs_csv(runs(strategy, mark(strategy))), f"strategy-{strategy.id}-runs.csv"


def orders_export(strategy: Strategy) -> tuple[str, str]:
    """(CSV text, file name) of the strategy's orders."""
    return orders_csv(strategy), f"strategy-{strategy.id}-orders.csv"
