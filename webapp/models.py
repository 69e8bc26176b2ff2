from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from flask_login import UserMixin
from sqlalchemy import DateTime, Numeric, TypeDecorator, UniqueConstraint, false, func, or_, select
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from webapp import clock
from webapp.extensions import db
from webapp.state_machine import Status


def utcnow() -> datetime:
    return clock.now()  # the system's one clock, so stored times agree with trigger times


Money = Numeric(14, 2, asdecimal=True)


class UTCDateTime(TypeDecorator):
    """Stored in UTC; always read back timezone-aware (SQLite would otherwise hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.astimezone(timezone.utc) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class User(UserMixin, db.Model):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(db.String(254), unique=True, index=True)  # stored lower-cased
    password_hash: Mapped[str] = mapped_column(db.String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    disabled: Mapped[bool] = mapped_column(default=False)
    # Risk limits over all the user's strategies (webapp/services/risk.py); None: no limit.
    daily_loss_limit: Mapped[Decimal | None] = mapped_column(Money, nullable=True)  # rupees, positive
    max_open_positions: Mapped[int | None] = mapped_column(nullable=True)
    # Two-factor login (webapp/services/two_factor.py): the TOTP secret, Fernet-encrypted like broker secrets;
    # set while enrolling and kept once enabled. totp_last_step is the time-step (unix time // 30) of the last
    # code accepted: a code of that step or an earlier one is refused, so no code works twice.
    totp_secret_enc: Mapped[bytes | None] = mapped_column(db.LargeBinary, nullable=True)
    totp_enabled: Mapped[bool] = mapped_column(default=False, server_default=false())
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    totp_last_step: Mapped[int | None] = mapped_column(db.BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    broker_accounts: Mapped[list[BrokerAccount]] = relationship(back_populates="user", cascade="all, delete-orphan")
    strategies: Mapped[list[Strategy]] = relationship(back_populates="user", cascade="all, delete-orphan")

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password, method="scrypt")

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return not self.disabled


class BrokerAccount(db.Model):
    __tablename__ = "broker_accounts"
    __table_args__ = (UniqueConstraint("user_id", "broker", name="uq_broker_accounts_user_broker"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    broker: Mapped[str] = mapped_column(db.String(16))  # paper | kite
    api_key_enc: Mapped[bytes] = mapped_column(db.LargeBinary)
    api_secret_enc: Mapped[bytes] = mapped_column(db.LargeBinary)
    access_token_enc: Mapped[bytes | None] = mapped_column(db.LargeBinary, nullable=True)
    # The account's outbound proxy for its Kite REST calls (its registered static IP), encrypted: the URL may
    # carry a user and password. None: calls leave directly from this server.
    proxy_url_enc: Mapped[bytes | None] = mapped_column(db.LargeBinary, nullable=True)
    api_key_last4: Mapped[str] = mapped_column(db.String(4))
    status: Mapped[str] = mapped_column(db.String(24), default="connected")  # connected | login_required
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Kite access tokens die at 06:00 IST the next day; past this the account needs a new login.
    access_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The one Kite account whose session the listener's ticker uses, picked by an admin (webapp/feeds/session.py).
    market_feed: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    user: Mapped[User] = relationship(back_populates="broker_accounts")

    def needs_login(self, now: datetime) -> bool:
        expired = self.access_token_expires_at is not None and self.access_token_expires_at <= now
        return self.status == "login_required" or self.access_token_enc is None or expired


class TradeTerms:
    """What one traded instrument is and how it is entered and exited. A strategy has one set today; the
    options issue gives a strategy several legs carrying these same columns, each with its own exits
    (webapp/engine/exits.py reads them from either)."""

    symbol: Mapped[str] = mapped_column(db.String(40))
    exchange: Mapped[str] = mapped_column(db.String(8))
    instrument_token: Mapped[int | None] = mapped_column(db.BigInteger, nullable=True)
    product: Mapped[str] = mapped_column(db.String(8), default="MIS")
    quantity: Mapped[int] = mapped_column()
    direction: Mapped[str] = mapped_column(db.String(5), default="long", server_default="long")  # long | short
    # Stop-loss: an absolute price, or percent / points from the entry fill (resolved when the entry fills).
    stop_loss_type: Mapped[str] = mapped_column(db.String(8), default="price", server_default="price")
    stop_loss: Mapped[Decimal] = mapped_column(Money)
    target_type: Mapped[str | None] = mapped_column(db.String(8), nullable=True)  # None: no target
    target: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    # Trailing: for every trail_every in favour, move the stop trail_by; both (and breakeven_at) in trail_unit.
    trail_unit: Mapped[str | None] = mapped_column(db.String(8), nullable=True)  # points | percent
    trail_every: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    trail_by: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    breakeven_at: Mapped[Decimal | None] = mapped_column(Money, nullable=True)  # stop to cost once this in favour
    order_type: Mapped[str] = mapped_column(db.String(8), default="MARKET", server_default="MARKET")
    limit_buffer_pct: Mapped[Decimal | None] = mapped_column(Numeric(6, 3, asdecimal=True), nullable=True)
    limit_wait_seconds: Mapped[int | None] = mapped_column(nullable=True)  # LIMIT unfilled this long → MARKET


class Strategy(TradeTerms, db.Model):
    __tablename__ = "strategies"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    broker_account_id: Mapped[int | None] = mapped_column(
        db.ForeignKey("broker_accounts.id", ondelete="SET NULL"), nullable=True
    )
    name: Mapped[str] = mapped_column(db.String(80))
    buy_time: Mapped[str] = mapped_column(db.String(8))  # HH:MM:SS, Asia/Kolkata: the entry (a SELL when short)
    sell_time: Mapped[str] = mapped_column(db.String(8))  # the exit
    # Recurring deployment: weekdays as digits, Monday 0 ("01234": every weekday); None: one day per START.
    weekdays: Mapped[str | None] = mapped_column(db.String(7), nullable=True)
    deployed: Mapped[bool] = mapped_column(default=False, server_default=false())  # runs on its weekdays
    status: Mapped[str] = mapped_column(db.String(16), default=Status.CREATED.value, index=True)
    status_reason: Mapped[str | None] = mapped_column(db.String(255), nullable=True)
    position: Mapped[int] = mapped_column(default=0)  # shares held, either direction
    entry_price: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    exit_price: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    # The current run's levels, resolved from the entry fill (a trailing stop moves on in Redis from here).
    stop_price: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    target_price: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    last_action: Mapped[str | None] = mapped_column(db.String(16), nullable=True)
    needs_attention: Mapped[bool] = mapped_column(default=False)
    run_date: Mapped[str | None] = mapped_column(db.String(10), nullable=True)  # IST date of the current run
    # The current run (runs.id): every event id and order tag of a run carries it, so nothing of an earlier
    # run can act on a later one. A plain integer, not a foreign key: runs already point at strategies.
    run_id: Mapped[int | None] = mapped_column(nullable=True)
    # Set when the user asks to STOP, before the STOP is queued: a queue lost with Redis is resent by recovery.
    stop_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Why it was asked to stop when not by its owner (the daily loss limit): a STOP resent by recovery says so too.
    stop_reason: Mapped[str | None] = mapped_column(db.String(255), nullable=True)
    algo_id: Mapped[str | None] = mapped_column(db.String(32), nullable=True)  # overrides KITE_ALGO_ID
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    user: Mapped[User] = relationship(back_populates="strategies")
    orders: Mapped[list[OrderLog]] = relationship(
        back_populates="strategy", cascade="all, delete-orphan", order_by="OrderLog.id"
    )


class Run(db.Model):
    """One START of a strategy: its own number for event ids and order tags, and its P&L."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    strategy_id: Mapped[int] = mapped_column(db.ForeignKey("strategies.id", ondelete="CASCADE"), index=True)
    run_date: Mapped[str] = mapped_column(db.String(10))  # IST trading day
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # How the run ended, written when the next run begins (until then the strategy's own columns say it), or
    # at once for a day that never ran ("skipped": no broker session, a risk limit).
    status: Mapped[str | None] = mapped_column(db.String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(db.String(255), nullable=True)
    direction: Mapped[str] = mapped_column(db.String(5), default="long", server_default="long")
    stop_price: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    target_price: Mapped[Decimal | None] = mapped_column(Money, nullable=True)


class OrderLog(db.Model):
    __tablename__ = "order_logs"
    __table_args__ = (UniqueConstraint("event_id", "attempt", name="uq_order_logs_event_attempt"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    strategy_id: Mapped[int] = mapped_column(db.ForeignKey("strategies.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(db.String(16))  # BUY | SELL | STOPLOSS | STOP | KILL
    event_id: Mapped[str] = mapped_column(db.String(80), index=True)
    side: Mapped[str] = mapped_column(db.String(4))  # BUY | SELL
    quantity: Mapped[int] = mapped_column()
    price: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    broker_order_id: Mapped[str | None] = mapped_column(db.String(64), nullable=True)
    tag: Mapped[str] = mapped_column(db.String(20), index=True)
    # SENDING (claimed; maybe at the broker) | COMPLETE | CANCELLED | REJECTED (final) | ERROR (surely not
    # placed) | TIMEOUT (maybe placed: look up by tag) | NOT_PLACED (looked up: not there)
    status: Mapped[str] = mapped_column(db.String(24))
    filled_quantity: Mapped[int] = mapped_column(default=0, server_default="0")  # what the broker filled
    attempt: Mapped[int] = mapped_column(default=1)
    holder: Mapped[str | None] = mapped_column(db.String(32), nullable=True)  # the claim: its lock's token
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(db.Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    strategy: Mapped[Strategy] = relationship(back_populates="orders")


class RecoveryCode(db.Model):
    """One of a user's ten one-time codes for when the authenticator app is lost: stored hashed (salted per
    code), shown once when two-factor is enabled, spent when used."""

    __tablename__ = "recovery_codes"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(db.String(255))
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(db.Model):
    """A per-user key for JSON API clients ("ak_<prefix>_<secret>"): only its SHA-256 is stored; the prefix
    finds the row and names the key to its owner. Works as a bearer token until revoked."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(db.String(80))
    prefix: Mapped[str] = mapped_column(db.String(16), unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(db.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEvent(db.Model):
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    actor_user_id: Mapped[int | None] = mapped_column(db.ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    subject_user_id: Mapped[int | None] = mapped_column(
        db.ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    strategy_id: Mapped[int | None] = mapped_column(nullable=True, index=True)
    action: Mapped[str] = mapped_column(db.String(48))
    severity: Mapped[str] = mapped_column(db.String(12), default="info")
    detail: Mapped[dict] = mapped_column(db.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=func.now())


class DayHalt(db.Model):
    """A user's trading halted for the rest of one IST trading day (the daily loss limit was hit)."""

    __tablename__ = "day_halts"
    __table_args__ = (UniqueConstraint("user_id", "trading_day", name="uq_day_halts_user_day"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    trading_day: Mapped[str] = mapped_column(db.String(10))
    reason: Mapped[str] = mapped_column(db.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KillSwitch(db.Model):
    """An admin's halt: global (user_id is None) or for one user. Active until released; while active,
    START is refused in its scope."""

    __tablename__ = "kill_switches"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), nullable=True,
                                                index=True)
    reason: Mapped[str] = mapped_column(db.String(255))
    engaged_by: Mapped[int | None] = mapped_column(db.ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    engaged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    released_by: Mapped[int | None] = mapped_column(db.ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def active_kill_switches() -> list[KillSwitch]:
    return list(db.session.scalars(select(KillSwitch).where(KillSwitch.released_at.is_(None))
                                   .order_by(KillSwitch.id)))


def kill_switch_for(user_id: int) -> KillSwitch | None:
    """The switch that halts this user's trading, if any (global or theirs)."""
    return db.session.scalar(select(KillSwitch).where(
        KillSwitch.released_at.is_(None), or_(KillSwitch.user_id.is_(None), KillSwitch.user_id == user_id)))


class Notification(db.Model):
    """Something a trader is told (a fill, a stop-loss hit, a skipped day...), written in the same transaction
    as the change it describes, so a committed fill always has its notice and a rolled-back one never does.
    The notifier process turns each into deliveries on the channels the user opted into; nothing in the order
    path ever talks to a channel."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    strategy_id: Mapped[int | None] = mapped_column(db.ForeignKey("strategies.id", ondelete="CASCADE"),
                                                    nullable=True)
    kind: Mapped[str] = mapped_column(db.String(24))  # webapp/engine/notices.py KINDS
    data: Mapped[dict] = mapped_column(db.JSON, default=dict)
    dedupe: Mapped[str | None] = mapped_column(db.String(80), nullable=True, unique=True)  # once-only notices
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)


class NotificationDelivery(db.Model):
    """One notification on one channel: pending until sent, retried with backoff, failed after the last try."""

    __tablename__ = "notification_deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    notification_id: Mapped[int] = mapped_column(db.ForeignKey("notifications.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(db.String(8))  # telegram | email
    status: Mapped[str] = mapped_column(db.String(8), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_try_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(db.Text, nullable=True)


class NotificationSettings(db.Model):
    """A user's channels and, for each, the kinds they opted into (comma-separated KINDS names)."""

    __tablename__ = "notification_settings"
    user_id: Mapped[int] = mapped_column(db.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    telegram_chat_id: Mapped[int | None] = mapped_column(db.BigInteger, nullable=True, unique=True)
    telegram_linked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    telegram_kinds: Mapped[str] = mapped_column(db.String(255), default="", server_default="")
    email_kinds: Mapped[str] = mapped_column(db.String(255), default="", server_default="")
