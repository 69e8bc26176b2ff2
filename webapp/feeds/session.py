"""Whose Kite session the market feed uses. An admin picks one broker account on /admin (its user's daily
"Log in with Kite" renews the token, and the listener rereads it, so a new token is used without a
restart); KITE_FEED_API_KEY / KITE_FEED_ACCESS_TOKEN override that choice. With neither, Kite mode still
runs: there is no ticker, and stop-losses are watched by REST quotes (webapp/feeds/quotes.py)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update

from webapp import clock, crypto
from webapp.extensions import db
from webapp.models import AuditEvent, BrokerAccount, User

log = logging.getLogger("feed.session")
ENVIRONMENT = "KITE_FEED_API_KEY/KITE_FEED_ACCESS_TOKEN (environment override)"


@dataclass(frozen=True)
class FeedSession:
    api_key: str
    access_token: str
    source: str  # what the admin page shows: never a secret

    def __repr__(self) -> str:  # keeps the token out of logs and tracebacks
        return f"FeedSession(source={self.source!r})"


def resolve(config: dict) -> tuple[FeedSession | None, str]:
    """The feed's session, or None and why there is none (shown on /admin/health). Reads the database."""
    key, token = config["KITE_FEED_API_KEY"], config["KITE_FEED_ACCESS_TOKEN"]
    if key and token:
        return FeedSession(key, token, ENVIRONMENT), ""
    account = chosen()
    if account is None:
        return None, ("no market-data account: an admin picks one under Market data on /admin (or set "
                      "KITE_FEED_API_KEY and KITE_FEED_ACCESS_TOKEN)")
    if account.needs_login(clock.now()):
        return None, (f"the market-data account (user #{account.user_id}, key …{account.api_key_last4}) needs "
                      "its daily Log in with Kite")
    return FeedSession(crypto.decrypt(account.api_key_enc), crypto.decrypt(account.access_token_enc),
                       f"broker account #{account.id} of user #{account.user_id} (key …{account.api_key_last4})"), ""


def chosen() -> BrokerAccount | None:
    return db.session.scalar(select(BrokerAccount).where(BrokerAccount.market_feed.is_(True),
                                                         BrokerAccount.broker == "kite"))


def candidates() -> list[tuple[BrokerAccount, str]]:
    """Every Kite account an admin may pick, with its owner's email."""
    rows = db.session.execute(select(BrokerAccount, User.email).join(User).where(BrokerAccount.broker == "kite")
                              .order_by(BrokerAccount.id))
    return [(account, email) for account, email in rows]


def choose(actor: User, account_id: int | None) -> BrokerAccount | None:
    """Makes this Kite account the feed's (None: no account), audited. Returns None for an unknown account."""
    account = None
    if account_id is not None:
        account = db.session.get(BrokerAccount, account_id)
        if account is None or account.broker != "kite":
            return None
    # One statement clears every other choice, so two admins racing still leave at most one account chosen
    # once both commits land (the later one wins).
    db.session.execute(update(BrokerAccount).where(BrokerAccount.market_feed.is_(True))
                       .values(market_feed=False))
    if account is not None:
        account.market_feed = True
    db.session.add(AuditEvent(actor_user_id=actor.id, subject_user_id=account.user_id if account else None,
                              action="market_feed_account", detail={"broker_account_id": account_id}))
    db.session.commit()
    log.info("market-data account chosen", extra={"event": "feed_account", "broker_account_id": account_id,
                                                  "user_id": actor.id})
    return account


def describe(config: dict) -> dict:
    """The feed as /admin/health shows it: which feed, whose session, or why there is none."""
    if config["FEED"] != "kite":
        return {"mode": config["FEED"], "source": config["FEED"], "reason": ""}
    session, reason = resolve(config)
    return {"mode": "kite", "source": session.source if session else None, "reason": reason}
