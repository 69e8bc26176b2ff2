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

import redis

from webapp import clock, instruments, keys, redis_client
from webapp.brokers import BrokerError, get_broker
from webapp.engine import exits
from webapp.extensions import db
from webapp.market_calendar import exchange_date, format_time, last_order_time, parse_time, session_for
from webapp.models import Strategy, User
from webapp.services import broker_accounts
from webapp.services.errors import ValidationFailed
from webapp.state_machine import is_editable

log = logging.getLogger(__name__)

# Today's simple fields, then the "More options" ones (each has a default that keeps a strategy as simple as
# before: long, a price stop, no target, no trailing, MARKET orders, one day per START).
SIMPLE_FIELDS = ("name", "symbol", "exchange", "product", "quantity", "buy_time", "sell_time", "stop_loss", "algo_id")
MORE_FIELDS = ("direction", "stop_loss_type", "target_type", "target", "trail_unit", "trail_every", "trail_by",
               "breakeven_at", "order_type", "limit_buffer_pct", "limit_wait_seconds", "weekdays")
FIELDS = SIMPLE_FIELDS + MORE_FIELDS
PRODUCTS = ("MIS", "CNC")
ORDER_TYPES = ("MARKET", "LIMIT")
TARGET_TYPES = exits.STOP_TYPES  # price | percent | points; None: no target
MAX_STOP_LOSS = Decimal("10000000")
MAX_LIMIT_BUFFER_PCT = Decimal("5")
LIMIT_WAIT_SECONDS = (1, 60)
WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri")
_WEEKDAYS = re.compile(r"[0-4]*")
# A change to one of these moves the stop or target against the last price: checked again on an edit.
SIDE_FIELDS = ("symbol", "exchange", "direction", "stop_loss_type", "stop_loss", "target_type", "target")
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


PROMPTS = {exits.PRICE: "Enter a price in rupees, e.g. 1450.50.",
           exits.PERCENT: "Enter a percentage, e.g. 1.5.",
           exits.POINTS: "Enter points (rupees per share), e.g. 10."}


def _price(raw: object, prompt: str = PROMPTS[exits.PRICE], limit: Decimal = MAX_STOP_LOSS,
           places: int = 2) -> tuple[Decimal | None, str | None]:
    """A positive decimal with at most `places` decimals: a price, a percentage or points."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        return None, prompt
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        return None, prompt
    if not value.is_finite() or value <= 0:
        return None, "Must be greater than 0."
    if value > limit:
        return None, f"Must be at most {limit:,}."
    step = Decimal(1).scaleb(-places)
    if value != value.quantize(step):
        return None, f"At most {places} decimal places."
    return value.quantize(step), None


def _blank(raw: object) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _choice(data: dict, field: str, default: str | None, upper: bool = False) -> str | None:
    """A choice as sent, trimmed and in its canonical case (the caller checks it is one of its list)."""
    raw = data.get(field)
    if _blank(raw):
        return default
    if not isinstance(raw, str):
        return "?"  # in no list of choices: refused by the caller
    value = raw.strip()
    return value.upper() if upper else value.lower()


def _weekdays(raw: object) -> tuple[str | None, str | None]:
    """Digits Monday=0 … Friday=4, e.g. "01234"; empty or None: one day per START. Sorted, each once."""
    if _blank(raw):
        return None, None
    if isinstance(raw, list) and all(isinstance(d, (str, int)) and not isinstance(d, bool) for d in raw):
        raw = "".join(str(d) for d in raw)
    value = raw.strip() if isinstance(raw, str) else None
    if value is None or len(value) > 5 or not _WEEKDAYS.fullmatch(value):
        return None, "Pick weekdays Monday to Friday: digits 0–4, Monday = 0 (e.g. 01234 for every weekday)."
    return "".join(sorted(set(value))) or None, None


def last_price(exchange: str, symbol: str, instrument: instruments.Instrument | None = None) -> Decimal | None:
    """The instrument's last price if cheaply known: the listener's last tick in Redis, else the instrument
    list's price (the paper catalogue, or Kite's list when it gave one); None when neither is known."""
    try:
        tick = redis_client.current().get(keys.last_price(exchange, symbol))
    except redis.RedisError:
        tick = None
    if tick:
        try:
            value = Decimal(tick.decode() if isinstance(tick, bytes) else str(tick))
            if value.is_finite() and value > 0:
                return value
        except InvalidOperation:
            pass
    if instrument is None and current_app.config["BROKER"] != "kite":
        instrument = instruments.lookup(exchange, symbol)
    if instrument is not None and instrument.last_price > 0:
        return instrument.last_price
    return None


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


def validate(data: dict, user: User | None = None, current: Strategy | None = None) -> dict:
    """Returns the cleaned fields or raises ValidationFailed with a message per bad field. `current`: the
    strategy being edited (its stop and target are checked against the last price only when they change)."""
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
    instrument = None
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

    errors.update(_terms(data, clean))

    algo_id = data.get("algo_id")
    clean["algo_id"] = algo_id.strip() if isinstance(algo_id, str) and algo_id.strip() else None
    if algo_id not in (None, "") and not (clean["algo_id"] and _ALGO_ID.fullmatch(clean["algo_id"])):
        errors["algo_id"] = "Letters, digits, - and _ only, at most 32 characters (or leave it empty)."

    changed = current is None or any(clean.get(f) != getattr(current, f) for f in SIDE_FIELDS)
    if changed and not {"symbol", "exchange", "direction", "stop_loss", "target"} & errors.keys():
        price = last_price(clean["exchange"], clean["symbol"], instrument)
        errors.update(side_problems(clean, price))

    if errors:
        raise ValidationFailed(errors)
    return clean


def _terms(data: dict, clean: dict) -> dict[str, str]:
    """The "More options": direction, stop and target types, trailing, breakeven, order type, weekdays.
    Fills `clean` (None where not used) and returns the messages per bad field."""
    errors: dict[str, str] = {}
    direction = _choice(data, "direction", exits.LONG)
    clean["direction"] = direction
    if direction not in exits.DIRECTIONS:
        errors["direction"] = "Must be long (buy first) or short (sell first)."
    elif direction == exits.SHORT and clean.get("product") == "CNC":
        errors["direction"] = ("A short must be intraday (MIS): shares you do not hold cannot be sold for delivery "
                               "(CNC).")
    short = direction == exits.SHORT

    stop_type = _choice(data, "stop_loss_type", exits.PRICE)
    clean["stop_loss_type"] = stop_type
    if stop_type not in exits.STOP_TYPES:
        errors["stop_loss_type"] = "Must be price, percent or points."
        stop_type = exits.PRICE
    clean["stop_loss"], message = _price(data.get("stop_loss"), PROMPTS[stop_type])
    if message:
        errors["stop_loss"] = message
    elif stop_type == exits.PERCENT and not short and clean["stop_loss"] >= 100:
        errors["stop_loss"] = "A long's stop must be under 100% below the entry (100% is a price of 0)."

    target_type = _choice(data, "target_type", None)
    if target_type == "none":
        target_type = None
    clean["target_type"], clean["target"] = target_type, None
    if target_type is not None and target_type not in TARGET_TYPES:
        errors["target_type"] = "Must be none, price, percent or points."
    elif target_type is not None:
        if _blank(data.get("target")):
            errors["target"] = "Enter the target, or choose no target."
        else:
            clean["target"], message = _price(data.get("target"), PROMPTS[target_type])
            if message:
                errors["target"] = message
            elif target_type == exits.PERCENT and short and clean["target"] >= 100:
                errors["target"] = "A short's target must be under 100% below the entry (100% is a price of 0)."

    unit = _choice(data, "trail_unit", exits.POINTS)
    if unit not in exits.TRAIL_UNITS:
        errors["trail_unit"] = "Must be points or percent."
        unit = exits.POINTS
    prompt = PROMPTS[unit]
    amounts: dict[str, Decimal | None] = {}
    for field in ("trail_every", "trail_by", "breakeven_at"):
        amounts[field] = None
        if not _blank(data.get(field)):
            amounts[field], message = _price(data.get(field), prompt)
            if message:
                errors[field] = message
            elif unit == exits.PERCENT and amounts[field] >= 100:  # type: ignore[operator]
                errors[field] = "Must be under 100%."
    every, by = amounts["trail_every"], amounts["trail_by"]
    both = ("Fill both, or neither: for every X in your favour, move the stop Y.")
    if _blank(data.get("trail_every")) and not _blank(data.get("trail_by")):
        errors.setdefault("trail_every", both)
    elif _blank(data.get("trail_by")) and not _blank(data.get("trail_every")):
        errors.setdefault("trail_by", both)
    elif every is not None and by is not None and by > every:
        errors["trail_by"] = "Must be at most the step (X): the stop cannot move further than the price did."
    clean["trail_every"], clean["trail_by"], clean["breakeven_at"] = every, by, amounts["breakeven_at"]
    clean["trail_unit"] = unit if any(v is not None for v in amounts.values()) else None

    order_type = _choice(data, "order_type", "MARKET", upper=True)
    clean["order_type"] = order_type
    clean["limit_buffer_pct"] = clean["limit_wait_seconds"] = None
    if order_type not in ORDER_TYPES:
        errors["order_type"] = "Must be MARKET or LIMIT."
    elif order_type == "LIMIT":  # either left empty: the engine's LIMIT_BUFFER_PCT / LIMIT_WAIT_SECONDS
        if data.get("limit_buffer_pct") not in (None, ""):
            clean["limit_buffer_pct"], message = _price(data.get("limit_buffer_pct"), "Enter a percentage, e.g. 0.5.",
                                                        MAX_LIMIT_BUFFER_PCT, places=3)
            if message:
                errors["limit_buffer_pct"] = message
        if data.get("limit_wait_seconds") not in (None, ""):
            low, high = LIMIT_WAIT_SECONDS
            clean["limit_wait_seconds"], message = _quantity(data.get("limit_wait_seconds"), high)
            if message:
                errors["limit_wait_seconds"] = f"Enter whole seconds from {low} to {high}."

    clean["weekdays"], message = _weekdays(data.get("weekdays"))
    if message:
        errors["weekdays"] = message
    return errors


def side_problems(clean: dict, price: Decimal | None) -> dict[str, str]:
    """A price-type stop or target on the wrong side of the last price (when one is known), and a price
    target that is not beyond a price stop: such a strategy would exit the moment it entered."""
    problems: dict[str, str] = {}
    short = clean["direction"] == exits.SHORT
    stop = clean["stop_loss"] if clean["stop_loss_type"] == exits.PRICE else None
    target = clean["target"] if clean["target_type"] == exits.PRICE else None
    if stop is not None and price is not None and (stop <= price if short else stop >= price):
        problems["stop_loss"] = (f"For a {'short' if short else 'long'}, the stop must be "
                                 f"{'above' if short else 'below'} the last price (₹{price}).")
    if target is not None and price is not None and (target >= price if short else target <= price):
        problems["target"] = (f"For a {'short' if short else 'long'}, the target must be "
                              f"{'below' if short else 'above'} the last price (₹{price}).")
    elif target is not None and stop is not None and (target >= stop if short else target <= stop):
        problems["target"] = (f"Must be {'below' if short else 'above'} the stop-loss (₹{stop}): the target is "
                              f"the price that {'falls' if short else 'rises'} in your favour.")
    # Points below the entry can be no more than the price itself (about the entry, as far as is known).
    if price is not None and not short and clean["stop_loss_type"] == exits.POINTS and clean["stop_loss"] >= price:
        problems["stop_loss"] = f"A long's stop of {clean['stop_loss']} points would be below 0 (last price ₹{price})."
    if price is not None and short and clean["target_type"] == exits.POINTS and clean["target"] >= price:
        problems["target"] = f"A short's target of {clean['target']} points would be below 0 (last price ₹{price})."
    return problems


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
    if strategy.deployed:  # its next run would begin from terms changed under it
        raise NotEditable("This strategy is deployed: STOP it before you change or delete it.")
    if strategy.position:
        raise NotEditable("This strategy still holds a position; square it off first.")


def update(strategy: Strategy, data: dict) -> Strategy:
    """Fields not sent keep their values (Decimals go back through the validator as strings)."""
    _ensure_editable(strategy)
    if not isinstance(data, dict):
        raise ValidationFailed({"body": "Expected a JSON object."})
    kept = {f: getattr(strategy, f) for f in FIELDS}
    merged = {f: str(v) if isinstance(v, Decimal) else v for f, v in kept.items()} | \
        {k: v for k, v in data.items() if k in FIELDS}
    for field, value in validate(merged, strategy.user, current=strategy).items():
        setattr(strategy, field, value)
    db.session.commit()
    log.info("strategy updated", extra={"event": "strategy_updated", "user_id": strategy.user_id, "strategy_id": strategy.id})
    return strategy


def delete(strategy: Strategy) -> None:
    _ensure_editable(strategy)
    db.session.delete(strategy)
    db.session.commit()
    log.info("strategy deleted", extra={"event": "strategy_deleted", "user_id": strategy.user_id, "strategy_id": strategy.id})


def _str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


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
        "direction": strategy.direction,
        "stop_loss_type": strategy.stop_loss_type,
        "target_type": strategy.target_type,
        "target": _str(strategy.target),
        "trail_unit": strategy.trail_unit,
        "trail_every": _str(strategy.trail_every),
        "trail_by": _str(strategy.trail_by),
        "breakeven_at": _str(strategy.breakeven_at),
        "order_type": strategy.order_type,
        "limit_buffer_pct": _str(strategy.limit_buffer_pct),
        "limit_wait_seconds": strategy.limit_wait_seconds,
        "weekdays": strategy.weekdays,
        "deployed": bool(strategy.deployed),
        "status": strategy.status,
        "status_reason": strategy.status_reason,
        "position": strategy.position,
        "entry_price": _str(strategy.entry_price),
        "needs_attention": strategy.needs_attention,
        "created_at": strategy.created_at.isoformat(),
    }
