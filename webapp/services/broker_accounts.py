"""Connecting a broker account: validate through the Broker boundary, then store the secrets encrypted."""
from __future__ import annotations

import logging
from urllib.parse import quote, urlencode, urlsplit

from flask import current_app
from sqlalchemy import select

from webapp import clock, crypto
from webapp.brokers import Credentials, get_broker
from webapp.extensions import db
from webapp.market_calendar import kite_token_expiry
from webapp.models import BrokerAccount, User
from webapp.services.errors import ValidationFailed

log = logging.getLogger(__name__)
FIELDS = ("api_key", "api_secret", "access_token")
# requests speaks socks5/socks5h only with PySocks (requests[socks]), which is not installed: http and https only.
PROXY_SCHEMES = ("http", "https")
PROXY_MAX = 500
PROXY_HINT = "Expected http://host:port or http://user:pass@host:port."


def account_for(user: User) -> BrokerAccount | None:
    return db.session.scalar(
        select(BrokerAccount).where(
            BrokerAccount.user_id == user.id, BrokerAccount.broker == current_app.config["BROKER"]
        )
    )


def connect(user: User, data: dict) -> BrokerAccount:
    """Raises ValidationFailed for missing fields and BrokerAuthFailed when the broker says no; in both
    cases nothing is stored. With Kite, the access token may be left out: the account then waits for
    "Log in with Kite". `proxy` left out keeps the stored one; "" removes it."""
    name = current_app.config["BROKER"]
    values = {f: data.get(f).strip() if isinstance(data.get(f), str) else "" for f in FIELDS}
    optional = {"access_token"} if name == "kite" else set()
    missing = {f: "Required." for f, v in values.items() if not v and f not in optional}
    raw_proxy = data.get("proxy")
    proxy = raw_proxy.strip() if isinstance(raw_proxy, str) else ""
    error = "Must be a string." if raw_proxy is not None and not isinstance(raw_proxy, str) else proxy_error(proxy)
    problems = {**missing, **({"proxy": error} if error else {})}
    if problems:
        raise ValidationFailed(problems)
    existing = account_for(user)
    if raw_proxy is None and existing is not None and existing.proxy_url_enc:
        proxy = crypto.decrypt(existing.proxy_url_enc)  # the check below goes the way orders will
    credentials = Credentials(**values, proxy=proxy or None)
    if values["access_token"]:
        get_broker(name, credentials=credentials).validate_credentials(credentials)
    account = existing or BrokerAccount(user_id=user.id, broker=name)
    account.api_key_enc = crypto.encrypt(values["api_key"])
    account.api_secret_enc = crypto.encrypt(values["api_secret"])
    account.api_key_last4 = values["api_key"][-4:]
    if raw_proxy is not None:  # left out: the stored proxy stays (a token refresh must not send orders direct)
        account.proxy_url_enc = crypto.encrypt(proxy) if proxy else None  # "": direct from this server
    _set_session(account, values["access_token"] or None)
    db.session.add(account)
    db.session.commit()
    log.info("broker connected", extra={"event": "broker_connected", "user_id": user.id, "broker": name,
                                        "status": account.status})
    return account


def _set_session(account: BrokerAccount, access_token: str | None) -> None:
    now = clock.now()
    account.access_token_enc = crypto.encrypt(access_token) if access_token else None
    account.status = "connected" if access_token else "login_required"
    account.validated_at = now if access_token else None
    account.access_token_expires_at = kite_token_expiry(now) if access_token and account.broker == "kite" else None


def kite_login_url(account: BrokerAccount, state: str) -> str:
    api_key = crypto.decrypt(account.api_key_enc)
    return (f"{current_app.config['KITE_LOGIN_URL']}?v=3&api_key={quote(api_key)}"
            f"&redirect_params={quote(urlencode({'state': state}))}")


def complete_kite_login(account: BrokerAccount, request_token: str) -> None:
    """Raises BrokerAuthFailed if Kite refuses the request token."""
    credentials = Credentials(crypto.decrypt(account.api_key_enc), crypto.decrypt(account.api_secret_enc), "",
                              crypto.decrypt(account.proxy_url_enc) if account.proxy_url_enc else None)
    broker = get_broker("kite", credentials=credentials)
    _set_session(account, broker.create_session(request_token))
    db.session.commit()
    log.info("kite login completed", extra={"event": "kite_login", "user_id": account.user_id})


def describe(account: BrokerAccount | None) -> dict | None:
    """What may be shown of an account: never a secret, only the api_key's last 4 characters."""
    if account is None:
        return None
    return {
        "broker": account.broker,
        "api_key_last4": account.api_key_last4,
        "status": account.status,
        "validated_at": account.validated_at.isoformat() if account.validated_at else None,
        "login_required": account.needs_login(clock.now()),
        "proxy": masked_proxy(crypto.decrypt(account.proxy_url_enc)) if account.proxy_url_enc else None,
    }


def proxy_error(url: str) -> str | None:
    """Why an outbound proxy URL is refused, or None ("" is fine: direct)."""
    if not url:
        return None
    if len(url) > PROXY_MAX:
        return f"At most {PROXY_MAX} characters."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"Not a URL we can read. {PROXY_HINT}"
    if parts.scheme.lower() not in PROXY_SCHEMES:
        return f"The scheme must be http or https (SOCKS is not supported here). {PROXY_HINT}"
    if not parts.hostname or not port:
        return f"A host and a port are needed. {PROXY_HINT}"
    if parts.path not in ("", "/") or parts.query or parts.fragment or any(c.isspace() for c in url):
        return f"Only scheme, host, port (and optionally user:pass@) belong in it. {PROXY_HINT}"
    return None


def masked_proxy(url: str) -> str:
    """scheme://host:port of a proxy URL: never its user or password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme.lower()}://{f'[{host}]' if ':' in host else host}:{parts.port}"
