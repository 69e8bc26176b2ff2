"""Chooses the Broker implementation named by the BROKER setting, for one broker account."""
from __future__ import annotations

from decimal import Decimal

from flask import current_app

from webapp import redis_client
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
from webapp.brokers.paper import PaperBroker
from webapp.brokers.ratelimit import RateLimiter, parse_limits

__all__ = ["Broker", "BrokerAuthFailed", "BrokerError", "BrokerTimeout", "BrokerUnavailable", "Credentials",
           "OrderRejected", "OrderRequest", "OrderState", "get_broker"]


def get_broker(name: str, account_id: int = 0, credentials: Credentials | None = None) -> Broker:
    """The broker for one account (its stored credentials), or for credentials being checked."""
    config = current_app.config
    if name == "paper":
        return PaperBroker(redis_client.current(), account_id, Decimal(str(config["PAPER_SLIPPAGE_BPS"])))
    if name == "kite":
        if credentials is None:
            credentials = _stored_credentials(account_id)
        limiter = RateLimiter(redis_client.current(), {
            "orders": parse_limits(config["KITE_ORDER_LIMITS"]),
            "quote": parse_limits(config["KITE_QUOTE_LIMITS"]),
            "other": parse_limits(config["KITE_OTHER_LIMITS"]),
        })
        return KiteBroker(config["KITE_API_ROOT"], credentials, limiter, config["KITE_TIMEOUT_SECONDS"])
    raise ValueError(f"unknown broker {name!r} (expected 'paper' or 'kite')")


def _stored_credentials(account_id: int) -> Credentials:
    from webapp import crypto
    from webapp.extensions import db
    from webapp.models import BrokerAccount

    account = db.session.get(BrokerAccount, account_id)
    if account is None or account.access_token_enc is None:
        raise BrokerAuthFailed("no Kite session for this account: log in with Kite")
    return Credentials(crypto.decrypt(account.api_key_enc), crypto.decrypt(account.api_secret_enc),
                       crypto.decrypt(account.access_token_enc))
