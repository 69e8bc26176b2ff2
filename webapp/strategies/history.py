"""Run history on the strategy pages (login, owner-scoped like every strategy route): the history fragment
the page re-fetches when the strategy changes, the runs as JSON, and the CSV exports of runs and orders."""
from __future__ import annotations

from flask import jsonify, render_template
from flask_login import current_user

from webapp.http import csv_attachment
from webapp.services import history
from webapp.services import strategies as service
from webapp.strategies import bp


@bp.app_template_global("run_history")
def run_history(strategy, state: dict | None = None, orders=None) -> dict:  # type: ignore[no-untyped-def]
    """What _history.html draws. `state` (status.for_page) and `orders`, when the page already has them,
    save reading them again."""
    price = history.last_price(state) if isinstance(state, dict) else history.mark(strategy)
    rows = history.runs(strategy, price, orders if isinstance(orders, list) else None)
    return {"rows": rows, "summary": history.summary(rows), "equity": history.equity(rows)}


@bp.get("/<int:strategy_id>/history")
def history_fragment(strategy_id: int):  # type: ignore[no-untyped-def]
    """The run history part of the strategy page, re-fetched by HTMX on a push or the 5 s poll."""
    strategy = service.get_owned(current_user, strategy_id)
    return render_template("strategies/_history.html", strategy=strategy,
                           history=run_history(strategy))


@bp.get("/<int:strategy_id>/runs")
def runs_json(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(current_user, strategy_id)
    return jsonify(history.payload(strategy))


@bp.get("/<int:strategy_id>/runs.csv")
def runs_csv(strategy_id: int):  # type: ignore[no-untyped-def]
    return csv_attachment(history.runs_export(service.get_owned(current_user, strategy_id)))


@bp.get("/<int:strategy_id>/orders.csv")
def orders_csv(strategy_id: int):  # type: ignore[no-untyped-def]
    return csv_attachment(history.orders_export(service.get_owned(current_user, strategy_id)))
