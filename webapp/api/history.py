"""Run history in the JSON API: GET /api/v1/strategy/<id>/runs (JSON), /runs.csv and /orders.csv, owned
strategies only (another user's id answers 404)."""
from __future__ import annotations

from flask import jsonify

from webapp.api import api_user, auth_required, bp
from webapp.http import csv_attachment
from webapp.services import strategies as service
from webapp.services import history


@bp.get("/strategy/<int:strategy_id>/runs")
@auth_required
def strategy_runs(strategy_id: int):  # type: ignore[no-untyped-def]
    return jsonify(history.payload(service.get_owned(api_user(), strategy_id)))


@bp.get("/strategy/<int:strategy_id>/runs.csv")
@auth_required
def strategy_runs_csv(strategy_id: int):  # type: ignore[no-untyped-def]
    return csv_attachment(history.runs_export(service.get_owned(api_user(), strategy_id)))


@bp.get("/strategy/<int:strategy_id>/orders.csv")
@auth_required
def strategy_orders_csv(strategy_id: int):  # type: ignore[no-untyped-def]
    return csv_attachment(history.orders_export(service.get_owned(api_user(), strategy_id)))
