"""Connecting a broker account: validate through the Broker boundary, then store the secrets encrypted."""
from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import select

from webapp import crypto
from webapp.brokers import Credentials, get_broker
from webapp.extensions import db
from webapp.models import BrokerAccount, User, utcnow
from webapp.services.errors import ValidationFailed

log = logging.getLogger(__name__)
FIELDS = ("api_key", "api_secret", "access_token")


def account_for(user: User) -> BrokerAccount | None:
    return db.session.scalar(
        select(BrokerAccount).where(
            BrokerAccount.user_id == user.id, BrokerAccount.broker == current_app.config["BROKER"]
        )
    )


def connect(user: User, data: dict) -> BrokerAccount:
    """Raises ValidationFailed for missing fields and BrokerAuthFailed when the broker says no; in both
    cases nothing is stored."""
    values = {f: data.get(f).strip() if isinstance(data.get(f), str) else "" for f in FIELDS}
    missing = {f: "Required." for f, v in values.items() if not v}
    if missing:
        raise ValidationFailed(missing)
    broker = get_broker(current_app.config["BROKER"])
    broker.validate_credentials(Credentials(**values))
    account = account_for(user) or BrokerAccount(user_id=user.id, broker=broker.name)
    account.api_key_enc = crypto.encrypt(values["api_key"])
    account.api_secret_enc = crypto.encrypt(values["api_secret"])
    account.access_token_enc = crypto.encrypt(values["access_token"])
    account.api_key_last4 = values["api_key"][-4:]
    account.status = "connected"
    account.validated_at = utcnow()
    db.session.add(account)
    db.session.commit()
    log.info("broker connected", extra={"event": "broker_connected", "user_id": user.id, "broker": broker.name})
    return account


def describe(account: BrokerAccount | None) -> dict | None:
    """What may be shown of an account: never a secret, only the api_key's last 4 characters."""
    if account is None:
        return None
    return {
        "broker": account.broker,
        "api_key_last4": account.api_key_last4,
        "status": account.status,
        "validated_at": account.validated_at.isoformat() if account.validated_at else None,
    }
