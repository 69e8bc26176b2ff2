"""Kite postbacks: the broker's pushed order updates. Kite signs each with sha256(order_id +
order_timestamp + api_secret) of the account that placed the order; an update that does not verify, or
for an order that is not ours, changes nothing. A verified one wakes the engine thread following that
order (brokers/updates.py). Receiving the same update twice is harmless."""
from __future__ import annotations

import hashlib
import hmac
import logging

from sqlalchemy import select

from webapp import crypto, redis_client
from webapp.brokers import updates
from webapp.brokers.kite import order_state
from webapp.extensions import db
from webapp.models import BrokerAccount, OrderLog, Strategy

log = logging.getLogger("postback")


class Refused(Exception):
    """Forged, unsigned or not ours: answered 403."""


def accept_postback(payload: object) -> None:
    if not isinstance(payload, dict):
        raise Refused("not a JSON object")
    order_id, stamp, checksum = (str(payload.get(name) or "") for name in ("order_id", "order_timestamp", "checksum"))
    tag = str(payload.get("tag") or "")
    if not (order_id and stamp and checksum and tag):
        raise Refused("order_id, order_timestamp, tag and checksum are required")
    # The tag names our intent row, which is committed before the order is sent, so an update can be
    # checked even when it arrives before the placement's answer.
    secret = db.session.scalar(
        select(BrokerAccount.api_secret_enc).join(Strategy, Strategy.broker_account_id == BrokerAccount.id)
        .join(OrderLog, OrderLog.strategy_id == Strategy.id).where(OrderLog.tag == tag).limit(1))
    if secret is None:
        raise Refused(f"no order of ours carries tag {tag!r}")
    expected = hashlib.sha256((order_id + stamp + crypto.decrypt(secret)).encode()).hexdigest()
    if not hmac.compare_digest(expected, checksum):
        log.warning("postback with a bad checksum refused", extra={"event": "postback_forged", "tag": tag,
                                                                   "broker_order_id": order_id})
        raise Refused("checksum does not verify")
    state = order_state(payload)
    updates.publish(redis_client.current(), state)
    log.info("postback accepted", extra={"event": "postback", "tag": tag, "broker_order_id": order_id,
                                         "status": state.status, "filled": state.filled_quantity})
