"""Strategy rules: what a valid strategy is, and who may see or change it. Every lookup is scoped to
the owner, so another user's id is indistinguishable from one that does not exist."""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import time
from decimal import Decimal, InvalidOperation

from flask import abort, current_app
from sqlalchemy import select

from webapp import clock, instruments, redis_client
from webapp.brokers import BrokerError, get_broker
from webapp.extensions import db
from webapp.market_calendar import exchange_date, format_time, last_order_time, parse_time, session_for
from webapp.models import Strategy, User
from webapp.services import broker_accounts
from webapp.services.errors import ValidationFailed
from webapp.state_machine import is_editable

log = logging.getLogger(__name__)

FIELDS = ("name", "symbol", "exchange", "product", "quantity", "buy_time", "sell_time", "stop_loss", "algo_id")
PRODUCTS = ("MIS", "CNC")
MAX_STOP_LOSS = Decimal("10000000")
MAX_ID = 2**63 - 1  # beyond a BIGINT: cannot exist, and must not reach the database driver
_DIGITS = re.compile(r"[0-9]{1,9}")  # str.isdigit() also accepts "²" and "١٢"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ALGO_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _text(data: dict, field: str) -> str:
    value = data.get(field)
    return value.strip() if isinstance(value, str) else ""


def _quantity(raw: object, limit: int) -> tuple[int | None, str | None]:
    if isinstance(raw, bool):
        return None, "Enter a whole number of shares."
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and _DIGITS.fullmatch(raw.strip()):
        value = int(raw.strip())
    else:
        return None, "Enter a whole number of shares."
    if not 1 <= value <= limit:
        return None, f"Must be between 1 and {limit:,}."
    return value, None


def _price(raw: object) -> tuple[Decimal | None, str | None]:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        return None, "Enter a price in rupees, e.g. 1450.50."
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        return None, "Enter a price in rupees, e.g. 1450.50."
    if not value.is_finite() or value <= 0:
        return None, "Must be greater than 0."
    if value > MAX_STOP_LOSS:
        return None, f"Must be at most {MAX_STOP_LOSS:,}."
    if value != value.quantize(Decimal("0.01")):
        return None, "At most 2 decimal places."
    return value.quantize(Decimal("0.01")), None


def _catalogue(user: User | None) -> tuple[list[str], Callable[[str, str], instruments.Instrument | None]]:
    """Which exchanges and instruments a strategy may name: the paper list, or the broker's own list in
    Kite mode (fetched with the user's Kite session, cached for the day)."""
    if current_app.config["BROKER"] != "kite":
        return instruments.exchanges(), instruments.lookup
    account = broker_accounts.account_for(user) if user is not None else None

    def lookup(exchange: str, symbol: str) -> instruments.Instrument | None:
        if account is None or account.needs_login(clock.now()):
            raise ValidationFailed({"symbol": "Log in with Kite first: symbols are checked against Kite's list."})
        broker = get_broker("kite", account.id)
        try:
            return instruments.kite_lookup(redis_client.current(), exchange, symbol, broker.instruments,
                                           exchange_date(clock.now()).isoformat())
        except BrokerError as exc:
            raise ValidationFailed({"symbol": f"Could not fetch Kite's instrument list: {exc}"}) from exc

    return instruments.KITE_EXCHANGES, lookup


def validate(data: dict, user: User | None = None) -> dict:
    """Returns the cleaned fields or raises ValidationFailed with a message per bad field."""
    if not isinstance(data, dict):
        raise ValidationFailed({"body": "Expected a JSON object."})
    errors: dict[str, str] = {}
    clean: dict = {}

    clean["name"] = _text(data, "name")
    if not clean["name"]:
        errors["name"] = "Required."
    elif len(clean["name"]) > 80:
        errors["name"] = "At most 80 characters."
    elif _CONTROL.search(clean["name"]):
        errors["name"] = "Use letters, digits, spaces and punctuation only."

    known_exchanges, lookup = _catalogue(user)
    clean["exchange"] = (_text(data, "exchange") or "NSE").upper()
    if clean["exchange"] not in known_exchanges:
        errors["exchange"] = f"Must be one of: {', '.join(known_exchanges)}."

    clean["symbol"] = _text(data, "symbol").upper()
    if not clean["symbol"]:
        errors["symbol"] = "Required."
    elif "exchange" not in errors:
        instrument = lookup(clean["exchange"], clean["symbol"])
        if instrument is None:
            errors["symbol"] = f"{clean['symbol'][:40]} is not a known {clean['exchange']} instrument."
        else:
            clean["instrument_token"] = instrument.instrument_token

    clean["product"] = (_text(data, "product") or "MIS").upper()
    if clean["product"] not in PRODUCTS:
        errors["product"] = "Must be MIS (intraday) or CNC (delivery)."

    clean["quantity"], message = _quantity(data.get("quantity"), current_app.config["MAX_QUANTITY"])
    if message:
        errors["quantity"] = message

    session = session_for(current_app.config["TRADING_CALENDAR"])
    times = {}
    for field in ("buy_time", "sell_time"):
        parsed = parse_time(data.get(field))  # type: ignore[arg-type]
        if parsed is None:
            errors[field] = "Enter a time as HH:MM or HH:MM:SS (24-hour, IST)."
        elif not session.contains(parsed):
            errors[field] = f"Must be within market hours, {session.describe()}."
        else:
            times[field] = parsed
            clean[field] = format_time(parsed)
    if len(times) == 2 and times["buy_time"] >= times["sell_time"]:
        errors["sell_time"] = "Must be after the buy time."
    if len(times) == 2 and "product" not in errors and "sell_time" not in errors:
        errors.update(mis_cutoff_problems(clean["product"], times["buy_time"], times["sell_time"]))

    clean["stop_loss"], message = _price(data.get("stop_loss"))
    if message:
        errors["stop_loss"] = message

    algo_id = data.get("algo_id")
    clean["algo_id"] = algo_id.strip() if isinstance(algo_id, str) and algo_id.strip() else None
    if algo_id not in (None, "") and not (clean["algo_id"] and _ALGO_ID.fullmatch(clean["algo_id"])):
        errors["algo_id"] = "Letters, digits, - and _ only, at most 32 characters (or leave it empty)."

    if errors:
        raise ValidationFailed(errors)
    return clean


def mis_cutoff_problems(product: str, buy: time, sell: time) -> dict[str, str]:
    """MIS times at or after the broker's intraday cut-off, by field: Kite squares MIS positions off itself
    at the cut-off and refuses new MIS orders after it, so such a time could never trade as asked."""
    config = current_app.config
    last = last_order_time(product, config["TRADING_CALENDAR"], parse_time(config["MIS_CUTOFF"]))
    if product != "MIS" or last >= session_for(config["TRADING_CALENDAR"]).closes:
        return {}
    why = (f"Intraday (MIS) positions are squared off by the broker at {format_time(last)} IST, and it refuses "
           f"new MIS orders after that: ")
    problems = {}
    if buy >= last:
        problems["buy_time"] = why + f"buy before {format_time(last)}."
    if sell >= last:
        problems["sell_time"] = why + f"sell before {format_time(last)}, or use CNC (delivery)."
    return problems


def list_for(user: User) -> list[Strategy]:
    return list(db.session.scalars(select(Strategy).where(Strategy.user_id == user.id).order_by(Strategy.id)))


def get_owned(user: User, strategy_id: int) -> Strategy:
    if not 0 < strategy_id <= MAX_ID:
        abort(404)
    strategy = db.session.scalar(select(Strategy).where(Strategy.id == strategy_id, Strategy.user_id == user.id))
    if strategy is None:
        abort(404)
    return strategy


def create(user: User, data: dict) -> Strategy:
    clean = validate(data, user)
    account = broker_accounts.account_for(user)
    strategy = Strategy(user_id=user.id, broker_account_id=account.id if account else None, **clean)
    db.session.add(strategy)
    db.session.commit()
    log.info("strategy created", extra={"event": "strategy_created", "user_id": user.id, "strategy_id": strategy.id})
    return strategy


class NotEditable(Exception):
    code = "STRATEGY_RUNNING"


def _ensure_editable(strategy: Strategy) -> None:
    if not is_editable(strategy.status):
        raise NotEditable("Stop the strategy before you change or delete it.")
    if strategy.position:
        raise NotEditable("This strategy still holds a position; square it off first.")


def update(strategy: Strategy, data: dict) -> Strategy:
    _ensure_editable(strategy)
    merged = {f: getattr(strategy, f) for f in FIELDS} | {k: v for k, v in data.items() if k in FIELDS}
    merged["stop_loss"] = str(merged["stop_loss"])
    for field, value in validate(merged, strategy.user).items():
        setattr(strategy, field, value)
    db.session.commit()
    log.info("strategy updated", extra={"event": "strategy_updated", "user_id": strategy.user_id, "strategy_id": strategy.id})
    return strategy


def delete(strategy: Strategy) -> None:
    _ensure_editable(strategy)
    db.session.delete(strategy)
    db.session.commit()
    log.info("strategy deleted", extra={"event": "strategy_deleted", "user_id": strategy.user_id, "strategy_id": strategy.id})


def to_dict(strategy: Strategy) -> dict:
    return {
        "id": strategy.id,
        "name": strategy.name,
        "symbol": strategy.symbol,
        "exchange": strategy.exchange,
        "product": strategy.product,
        "quantity": strategy.quantity,
        "buy_time": strategy.buy_time,
        "sell_time": strategy.sell_time,
        "stop_loss": str(strategy.stop_loss),
        "algo_id": strategy.algo_id,
        "status": strategy.status,
        "status_reason": strategy.status_reason,
        "position": strategy.position,
        "entry_price": str(strategy.entry_price) if strategy.entry_price is not None else None,
        "needs_attention": strategy.needs_attention,
        "created_at": strategy.created_at.isoformat(),
    }
