"""The broker boundary: the engine and the web talk to brokers only through this interface, so paper
and Kite share every line above it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Credentials:
    api_key: str
    api_secret: str
    access_token: str


class BrokerError(Exception):
    """Base of every broker failure; `code` is what the UI and the JSON API show."""

    code = "BROKER_ERROR"


class BrokerAuthFailed(BrokerError):
    code = "BROKER_AUTH_FAILED"


class Broker(Protocol):
    name: str

    def validate_credentials(self, credentials: Credentials) -> None:
        """Raise BrokerAuthFailed (with a message a person can act on) unless the broker accepts them."""
