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
from webapp.brokers.paper import PaperBroker

__all__ = ["Broker", "BrokerAuthFailed", "BrokerError", "BrokerTimeout", "BrokerUnavailable", "Credentials",
           "OrderRejected", "OrderRequest", "OrderState", "get_broker"]


def get_broker(name: str, account_id: int = 0) -> Broker:
    if name == "paper":
        return PaperBroker(
            redis_client.current(), account_id, Decimal(str(current_app.config["PAPER_SLIPPAGE_BPS"]))
        )
    raise ValueError(f"unknown broker {name!r} (expected 'paper')")
