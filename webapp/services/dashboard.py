"""The dashboard: the day summary at the top and the strategies in the order a trader scans them
(in position first, then waiting to enter, then the rest, each by name)."""
from __future__ import annotations

from flask_login import current_user

from webapp import clock
from webapp.models import Strategy
from webapp.services import broker_accounts, risk, status
from webapp.services import strategies as service

RANK = {"in_position": 0, "waiting_entry": 1}
DONE = {"completed", "stopped_loss", "target_hit", "stopped", "failed", "killed"}


def ordered(strategies: list[Strategy], states: dict[int, dict]) -> list[Strategy]:
    return sorted(strategies, key=lambda s: (RANK.get(states[s.id]["status"], 2), s.name.casefold(), s.id))


def summary(user, strategies: list[Strategy], states: dict[int, dict]) -> dict:  # type: ignore[no-untyped-def]
    """Today's realised, unrealised and total P&L (the risk service's day P&L, the same figure the daily
    loss limit watches), open positions, strategies running / waiting / done today, the broker session."""
    day = risk.trading_day(clock.now())
    pnl = risk.day_pnl(user, day, without_redis=True)
    codes = [states[s.id]["status"] for s in strategies]
    account = broker_accounts.account_for(user)
    if account is None:
        broker = "none"
    elif account.needs_login(clock.now()):
        broker = "login"
    else:
        broker = "connected"
    return {
        "day": day,
        "realised": pnl.realised, "unrealised": pnl.unrealised, "total": pnl.total,
        "open_positions": pnl.open_positions, "unpriced": len(pnl.unpriced),
        "running": codes.count("in_position"), "waiting": codes.count("waiting_entry"),
        "done": sum(1 for s in strategies if states[s.id]["status"] in DONE and s.run_date == day),
        "broker": broker, "broker_name": account.broker if account else None,
    }


def context() -> dict:
    strategies = service.list_for(current_user)
    states = {s.id: status.for_page(s) for s in strategies}
    return {"strategies": ordered(strategies, states), "states": states, "stale": status.stale_symbols(),
            "summary": summary(current_user, strategies, states)}
