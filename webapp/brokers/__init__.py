"""Chooses the Broker implementation named by the BROKER setting, for one broker account."""
from __future__ import annotations

import threading
from datetime import time
from decimal import Decimal
from typing import Callable

from flask import current_app

from webapp import redis_client
from webapp.market_calendar import last_order_time, parse_time, session_for
from webapp.brokers.base import (
    Broker,
    BrokerAuthFailed,
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    Credentials,
    OrderRejected,
    OrderRequest,
    OrderState,
)
from webapp.brokers.kite import KiteBroker
from webapp.brokers.paper import PaperBroker, Timing
from webapp.brokers.ratelimit import RateLimiter, parse_limits

__all__ = ["Broker", "BrokerAuthFailed", "BrokerError", "BrokerTimeout", "BrokerUnavailable", "Credentials",
           "OrderRejected", "OrderRequest", "OrderState", "get_broker"]


def get_broker(name: str, account_id: int = 0, credentials: Credentials | None = None) -> Broker:
    """The broker for one account (its stored credentials), or for credentials being checked."""
    config = current_app.config
    if name == "paper":
        # Kite's limits apply to paper orders too, so paper trading paces a burst as live trading would.
        # One per account and setting, made once: an order thread should not pay for building it.
        key = ("paper", config["REDIS_URL"], account_id, config["PAPER_SLIPPAGE_BPS"], config["PAPER_LATENCY_MS"],
               config["PAPER_FILL_MS"], _limits_key(), config["TRADING_CALENDAR"], config["MIS_CUTOFF"])
        return _cached(key, lambda: PaperBroker(
            redis_client.current(), account_id, Decimal(str(config["PAPER_SLIPPAGE_BPS"])),
            Timing(config["PAPER_LATENCY_MS"], config["PAPER_FILL_MS"]), _limiter(), _mis_square_off()))
    if name == "kite":
        if credentials is not None:
            return _kite(credentials)
        credentials = _stored_credentials(account_id)
        # One client per account and session: its kept-alive connection saves a TCP (and TLS) handshake
        # on every order, and threads share it (requests' pool).
        return _cached(("kite", config["KITE_API_ROOT"], account_id, credentials, _limits_key()),
                       lambda: _kite(credentials))
    raise ValueError(f"unknown broker {name!r} (expected 'paper' or 'kite')")


_clients: dict[tuple, Broker] = {}
_clients_guard = threading.Lock()


def _cached(key: tuple, make: Callable[[], Broker]) -> Broker:
    with _clients_guard:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = make()
        return client


def _limits_key() -> tuple[str, ...]:
    config = current_app.config
    return (config["REDIS_URL"], config["KITE_ORDER_LIMITS"], config["KITE_QUOTE_LIMITS"], config["KITE_OTHER_LIMITS"])


def _mis_square_off() -> time | None:
    """When the paper exchange closes MIS positions itself: Kite's cut-off, where the calendar has one."""
    config = current_app.config
    calendar = config["TRADING_CALENDAR"]
    if not session_for(calendar).mis_cutoff:
        return None
    return last_order_time("MIS", calendar, parse_time(config["MIS_CUTOFF"]))


def _limiter() -> RateLimiter:
    config = current_app.config
    return RateLimiter(redis_client.current(), {
        "orders": parse_limits(config["KITE_ORDER_LIMITS"]),
        "quote": parse_limits(config["KITE_QUOTE_LIMITS"]),
        "other": parse_limits(config["KITE_OTHER_LIMITS"]),
    })


def _kite(credentials: Credentials) -> KiteBroker:
    config = current_app.config
    return KiteBroker(config["KITE_API_ROOT"], credentials, _limiter(), config["KITE_TIMEOUT_SECONDS"])


def market_protection(value: str) -> float:
    """MARKET_PROTECTION: -1 (Kite's automatic protection) or a percentage 0 < x ≤ 100. Anything else is
    refused at start-up: Kite would refuse every order."""
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if number != -1 and not 0 < number <= 100:
        raise ValueError(f"MARKET_PROTECTION must be -1 (automatic) or a percentage 0 < x <= 100, not {value!r}")
    return number


def _stored_credentials(account_id: int) -> Credentials:
    from webapp import crypto
    from webapp.extensions import db
    from webapp.models import BrokerAccount

    account = db.session.get(BrokerAccount, account_id)
    if account is None or account.access_token_enc is None:
        raise BrokerAuthFailed("no Kite session for this account: log in with Kite")
    return Credentials(crypto.decrypt(account.api_key_enc), crypto.decrypt(account.api_secret_enc),
                       crypto.decrypt(account.access_token_enc),
                       crypto.decrypt(account.proxy_url_enc) if account.proxy_url_enc else None)
