"""A strategy's terms in a trader's words, for the dashboard and the strategy page: one place, so a card
and the page never describe the same stop two ways."""
from __future__ import annotations

from decimal import Decimal

from flask import current_app
from markupsafe import Markup, escape

from webapp.engine import exits
from webapp.models import Strategy
from webapp.money import inr
from webapp.market_calendar import IST
from webapp.services.deploy import describe_weekdays, next_run


def _amount(kind: str, value: Decimal) -> str:
    if kind == exits.PERCENT:
        return f"{value.normalize():f}%"
    if kind == exits.POINTS:
        return f"{value.normalize():f} pts"
    return inr(value)


def _level(kind: str, value: Decimal, in_force: str | None, side: str) -> str:
    """The level in force once the entry filled (with the rule it came from), else the rule."""
    rule = f"{_amount(kind, value)} {side} entry" if kind != exits.PRICE else None
    if in_force:
        return inr(in_force) + (f" ({rule})" if rule else "")
    return rule or _amount(kind, value)


def schedule_text(strategy: Strategy) -> str:
    if not strategy.weekdays:
        return "One day per START"
    named = "Mon–Fri" if strategy.weekdays == "01234" else describe_weekdays(strategy.weekdays)
    if not strategy.deployed:
        return f"{named}, until stopped (not deployed: press START)"
    following = next_run(strategy)
    return f"{named}, until stopped" + (f"; next {following.astimezone(IST):%a %d %b %H:%M} IST" if following else "")


def facts(strategy: Strategy, state: dict) -> list[tuple[str, str]]:
    """(label, text) rows for a strategy's exits, direction, order type and schedule. `state` is the
    status service's answer: it carries the levels in force (a trailed stop included)."""
    short = strategy.direction == exits.SHORT
    away, towards = ("above", "below") if short else ("below", "above")
    rows = [("Direction", "Short: SELL, then BUY back" if short else "Long: BUY, then SELL"),
            ("Stop-loss", _level(strategy.stop_loss_type, strategy.stop_loss, state.get("stop_price"), away))]
    if strategy.target_type and strategy.target is not None:
        rows.append(("Target", _level(strategy.target_type, strategy.target, state.get("target_price"), towards)))
    if strategy.trail_every and strategy.trail_by:
        unit = strategy.trail_unit or exits.POINTS
        trail = f"every {_amount(unit, strategy.trail_every)} in favour, move {_amount(unit, strategy.trail_by)}"
        if strategy.breakeven_at:
            trail += f"; to cost at +{_amount(unit, strategy.breakeven_at)}"
        rows.append(("Trailing", trail))
    elif strategy.breakeven_at:
        rows.append(("Trailing", f"to cost at +{_amount(strategy.trail_unit or exits.POINTS, strategy.breakeven_at)}"))
    if strategy.order_type == "LIMIT":
        config = current_app.config
        buffer = strategy.limit_buffer_pct if strategy.limit_buffer_pct is not None else \
            Decimal(str(config["LIMIT_BUFFER_PCT"]))
        wait = strategy.limit_wait_seconds or config["LIMIT_WAIT_SECONDS"]
        rows.append(("Orders", f"LIMIT ±{buffer.normalize():f}%, MARKET after {wait:g} s unfilled"))
    rows.append(("Runs", schedule_text(strategy)))
    return rows


def pnl_attrs(key: str, state: dict) -> Markup:
    """The P&L cell's colour (none for nothing or zero) and, while a position is held, what static/js/live.js
    needs to mark it at every pushed price of `key` ("EXCHANGE:SYMBOL") the way the status service does."""
    pnl = state.get("pnl")
    attrs = {"class": "" if not pnl or Decimal(pnl) == 0 else "pnl-down" if pnl.startswith("-") else "pnl-up"}
    if state.get("position") and state.get("entry_price"):
        attrs |= {"data-pnl-of": key, "data-entry": state["entry_price"], "data-position": state["position"],
                  "data-sign": -1 if state.get("direction") == exits.SHORT else 1}
    return Markup(" ".join(f'{name}="{escape(value)}"' for name, value in attrs.items() if value != ""))
