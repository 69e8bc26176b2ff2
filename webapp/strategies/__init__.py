from __future__ import annotations

from flask import Blueprint, current_app, flash, render_template, request, url_for
from flask_login import current_user, login_required

from webapp import instruments
from webapp.services import lifecycle
from webapp.http import go_to, is_htmx
from webapp.services import broker_accounts, dashboard, status
from webapp.services import strategies as service
from webapp.services.errors import ValidationFailed
from webapp.services.strategies import NotEditable
from webapp.state_machine import is_editable

bp = Blueprint("strategies", __name__, url_prefix="/strategies")


@bp.before_request
@login_required
def _require_login() -> None:
    return None


# What the "More options" inputs show before the trader changes anything (the LIMIT pair, the engine's
# defaults, is only used once LIMIT is picked, so it can sit there ready).
FORM_DEFAULTS = {"exchange": "NSE", "product": "MIS", "direction": "long", "stop_loss_type": "price",
                 "target_type": "", "trail_unit": "points", "order_type": "MARKET"}


def _posted() -> dict:
    """The form as the service takes it: the weekday checkboxes are one value per ticked box."""
    data = request.form.to_dict()
    data["weekdays"] = "".join(request.form.getlist("weekdays"))
    return data


def _last_price(exchange: object, symbol: object):  # type: ignore[no-untyped-def]
    if not (isinstance(symbol, str) and symbol.strip() and isinstance(exchange, str)):
        return None
    return service.last_price(exchange.strip().upper() or "NSE", symbol.strip().upper()[:40])


def _form(strategy, errors: dict, status: int, values):  # type: ignore[no-untyped-def]
    config = current_app.config
    limit = {"limit_buffer_pct": f"{config['LIMIT_BUFFER_PCT']:g}", "limit_wait_seconds": f"{config['LIMIT_WAIT_SECONDS']:g}"}
    values = {**FORM_DEFAULTS, **limit, **{k: v for k, v in values.items() if v is not None}}
    context = {
        "strategy": strategy,
        "errors": errors,
        "values": values,
        "symbols": sorted(sym for _, sym in instruments.paper_catalog()),
        "exchanges": instruments.exchanges(),
        "more_open": bool(errors.keys() & set(service.MORE_FIELDS)),
        "weekday_names": service.WEEKDAY_NAMES,
        "last_price": _last_price(values.get("exchange"), values.get("symbol")),
    }
    template = "strategies/_form.html" if is_htmx() else "strategies/form.html"
    return render_template(template, **context), status


@bp.get("/last-price")
def last_price():  # type: ignore[no-untyped-def]
    """The line beside the stop-loss field, refreshed by HTMX when the symbol or exchange changes."""
    return render_template("strategies/_last_price.html", last_price=_last_price(
        request.args.get("exchange", "NSE"), request.args.get("symbol")))


@bp.get("")
def index():  # type: ignore[no-untyped-def]
    return render_template("strategies/index.html", **dashboard.context(),
                           account=broker_accounts.describe(broker_accounts.account_for(current_user)))


@bp.get("/cards")
def cards():  # type: ignore[no-untyped-def]
    """The dashboard's live part (summary and table), re-fetched on a push or every 5 s while polling."""
    return render_template("strategies/_table.html", **dashboard.context())


@bp.route("/new", methods=["GET", "POST"])
def new():  # type: ignore[no-untyped-def]
    if request.method == "POST":
        try:
            strategy = service.create(current_user, _posted())
        except ValidationFailed as exc:
            return _form(None, exc.fields, 422, _posted())
        flash(f"Strategy “{strategy.name}” created.", "success")
        return go_to(url_for("strategies.detail", strategy_id=strategy.id))
    return _form(None, {}, 200, {})


def _panel_context(strategy) -> dict:  # type: ignore[no-untyped-def]
    return {"strategy": strategy, "state": status.for_page(strategy), "orders": status.orders(strategy),
            "editable": is_editable(strategy.status)}


@bp.get("/<int:strategy_id>")
def detail(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(current_user, strategy_id)
    return render_template("strategies/detail.html", **_panel_context(strategy))


@bp.get("/<int:strategy_id>/panel")
def panel(strategy_id: int):  # type: ignore[no-untyped-def]
    """The live part of the strategy page, re-fetched by HTMX."""
    strategy = service.get_owned(current_user, strategy_id)
    return render_template("strategies/_panel.html", **_panel_context(strategy))


def _back(strategy_id: int):  # type: ignore[no-untyped-def]
    """After START/STOP: back to the dashboard when the button was there, else to the strategy page
    (only those two: `back` is never an open redirect)."""
    dashboard = url_for("strategies.index")
    return go_to(dashboard if request.form.get("back") == dashboard
                 else url_for("strategies.detail", strategy_id=strategy_id))


@bp.post("/<int:strategy_id>/start")
def start(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(current_user, strategy_id)
    try:
        flash(lifecycle.start(strategy), "success")
    except (lifecycle.StartRefused, lifecycle.EngineUnavailable) as exc:
        flash(f"Not started: {exc}", "error")
    return _back(strategy_id)


@bp.post("/<int:strategy_id>/stop")
def stop(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(current_user, strategy_id)
    try:
        flash(lifecycle.request_stop(strategy), "success")
    except (lifecycle.NotRunning, lifecycle.EngineUnavailable) as exc:
        flash(str(exc), "error")
    return _back(strategy_id)


@bp.post("/<int:strategy_id>/acknowledge")
def acknowledge(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(current_user, strategy_id)
    try:
        flash(lifecycle.acknowledge(strategy, current_user.id), "success")
    except lifecycle.NothingToAcknowledge as exc:
        flash(str(exc), "error")
    return _back(strategy_id)


@bp.route("/<int:strategy_id>/edit", methods=["GET", "POST"])
def edit(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(current_user, strategy_id)
    if request.method == "POST":
        try:
            service.update(strategy, _posted())
        except ValidationFailed as exc:
            return _form(strategy, exc.fields, 422, _posted())
        except NotEditable as exc:
            return _form(strategy, {"form": str(exc)}, 409, _posted())
        flash("Strategy saved.", "success")
        return go_to(url_for("strategies.detail", strategy_id=strategy.id))
    return _form(strategy, {}, 200, service.to_dict(strategy))


@bp.post("/<int:strategy_id>/delete")
def delete(strategy_id: int):  # type: ignore[no-untyped-def]
    strategy = service.get_owned(current_user, strategy_id)
    try:
        service.delete(strategy)
    except NotEditable as exc:
        flash(str(exc), "error")
        return go_to(url_for("strategies.detail", strategy_id=strategy_id))
    flash("Strategy deleted.", "success")
    return go_to(url_for("strategies.index"))

from webapp.strategies import history  # noqa: E402,F401  (run history and CSV exports, on bp)
