"""Chooses the Broker implementation named by the BROKER setting."""
from __future__ import annotations

from webapp.brokers.base import Broker, BrokerAuthFailed, BrokerError, Credentials
from webapp.brokers.paper import PaperBroker

__all__ = ["Broker", "BrokerAuthFailed", "BrokerError", "Credentials", "get_broker"]


def get_broker(name: str) -> Broker:
    if name == "paper":
        return PaperBroker()
    raise ValueError(f"unknown broker {name!r} (expected 'paper')")
