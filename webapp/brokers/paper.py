"""The paper broker: a Broker implementation that simulates the exchange, so paper mode is a setting and
never a second code path in the engine."""
from __future__ import annotations

import re

from webapp.brokers.base import BrokerAuthFailed, Credentials

# Kite issues lower-case alphanumeric keys; paper mode checks the same shapes so a user's real
# credentials pass here and typos are caught before Kite is switched on.
_FIELD_RULES = {
    "api_key": (re.compile(r"^[A-Za-z0-9]{6,64}$"), "6–64 letters or digits"),
    "api_secret": (re.compile(r"^[A-Za-z0-9]{8,64}$"), "8–64 letters or digits"),
    "access_token": (re.compile(r"^[A-Za-z0-9]{8,64}$"), "8–64 letters or digits"),
}


class PaperBroker:
    name = "paper"

    def validate_credentials(self, credentials: Credentials) -> None:
        bad = [
            f"{field} must be {rule}"
            for field, (pattern, rule) in _FIELD_RULES.items()
            if not pattern.match(getattr(credentials, field) or "")
        ]
        if bad:
            raise BrokerAuthFailed("; ".join(bad))
