"""What the system tells a trader, as rows of `notifications` written in the transaction of the change they
describe. Only facts go in (kind, ids, quantities, prices, the broker's words); the wording, the channels and
the sending belong to the notifier (webapp/services/notifications.py, jobs/notifier.py), never to the order
path."""
from __future__ import annotations

from decimal import Decimal

from webapp.models import Notification, Strategy

ENTRY_FILLED = "entry_filled"
EXIT_FILLED = "exit_filled"
STOPLOSS_HIT = "stoploss_hit"
TARGET_HIT = "target_hit"
ORDER_FAILED = "order_failed"
POSITION_AT_RISK = "position_at_risk"
LOGIN_REMINDER = "login_reminder"
DAY_SKIPPED = "day_skipped"
KILL_SWITCH = "kill_switch"

# Every kind, in the order the settings page lists them.
KINDS = (ENTRY_FILLED, EXIT_FILLED, STOPLOSS_HIT, TARGET_HIT, ORDER_FAILED, POSITION_AT_RISK, LOGIN_REMINDER,
         DAY_SKIPPED, KILL_SWITCH)
# An exit's kind by the event that sent it: a stop-loss or target exit is told as that, once.
EXIT_KINDS = {"STOPLOSS": STOPLOSS_HIT, "TARGET": TARGET_HIT}


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def row(kind: str, user_id: int, strategy_id: int | None = None, dedupe: str | None = None, **data: object) -> dict:
    """Column values for one notification (for a Core insert, or Notification(**row(...))). `dedupe` is for
    notices the notifier itself raises (once a day); never set in the order path, where a unique clash would
    fail the transaction that records a fill."""
    return {"user_id": user_id, "strategy_id": strategy_id, "kind": kind, "dedupe": dedupe,
            "data": {key: value for key, value in data.items() if value is not None}}


def entry_filled(strategy: Strategy, side: str, quantity: int, price: Decimal) -> dict:
    return row(ENTRY_FILLED, strategy.user_id, strategy.id, run=strategy.run_id,
               side=side, quantity=quantity, asked=strategy.quantity, price=_money(price),
               stop=_money(strategy.stop_price), target=_money(strategy.target_price))


def exit_filled(strategy: Strategy, event: str, side: str, quantity: int, price: Decimal | None,
                reason: str) -> dict:
    kind = EXIT_KINDS.get(event, EXIT_FILLED)
    return row(kind, strategy.user_id, strategy.id, run=strategy.run_id, event=event,
               side=side, quantity=quantity, price=_money(price), reason=reason)


def failed(strategy: Strategy, event: str, reason: str, at_risk: bool) -> Notification:
    """A failed run: money at risk (a position open or unknown) is its own, louder kind."""
    kind = POSITION_AT_RISK if at_risk else ORDER_FAILED
    return Notification(**row(kind, strategy.user_id, strategy.id, run=strategy.run_id, event=event, reason=reason, position=strategy.position))
