"""Settings, from the environment (or a .env file) with safe defaults for a single machine."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet
from dotenv import load_dotenv

from webapp.instance_secrets import load_or_create

ROOT = Path(__file__).resolve().parent.parent
load_dotenv(ROOT / ".env")


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def metrics_dir(instance_dir: Path) -> Path:
    """Where every process writes its metrics (prometheus_client's multiprocess files, read by /metrics):
    PROMETHEUS_MULTIPROC_DIR when the process was given one (jobs/run_all.py exports it), else METRICS_DIR,
    else INSTANCE_DIR/metrics."""
    return Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("METRICS_DIR") or instance_dir / "metrics")


class Config:
    """Read once per process when create_app() is called; tests pass overrides as a dict."""

    def __init__(self) -> None:
        self.INSTANCE_DIR = Path(os.environ.get("INSTANCE_DIR", ROOT / "instance"))
        self.SECRET_KEY = load_or_create(
            "SECRET_KEY", self.INSTANCE_DIR / "secret_key", lambda: secrets.token_hex(32)
        )
        self.ALGO_FERNET_KEY = load_or_create(
            "ALGO_FERNET_KEY", self.INSTANCE_DIR / "fernet_key", lambda: Fernet.generate_key().decode()
        )
        self.SQLALCHEMY_DATABASE_URI = os.environ.get(
            "DATABASE_URL", f"sqlite:///{self.INSTANCE_DIR / 'algo.sqlite3'}"
        )
        self.REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6390/0")
        self.REDIS_PREFIX = os.environ.get("REDIS_PREFIX", "")
        self.BROKER = os.environ.get("BROKER", "paper")
        self.KITE_API_ROOT = os.environ.get("KITE_API_ROOT", "https://api.kite.trade")
        self.KITE_TICKER_ROOT = os.environ.get("KITE_TICKER_ROOT", "wss://ws.kite.trade")
        # "nse": NSE cash session on trading days; "always": every day, all day (demos, tests).
        self.TRADING_CALENDAR = os.environ.get("TRADING_CALENDAR", "nse")
        self.MAX_QUANTITY = int(os.environ.get("MAX_QUANTITY", "100000"))
        self.API_TOKEN_TTL_SECONDS = int(os.environ.get("API_TOKEN_TTL_SECONDS", str(12 * 3600)))
        self.LOGIN_LIMIT_PER_IP = os.environ.get("LOGIN_LIMIT_PER_IP", "20 per minute")
        self.LOGIN_LIMIT_PER_ACCOUNT = os.environ.get("LOGIN_LIMIT_PER_ACCOUNT", "5 per minute")
        # Two-factor login (webapp/services/two_factor.py): admins must have it on before any admin page works;
        # after the password, the code must follow within TWO_FACTOR_PENDING_SECONDS.
        self.ADMIN_TWO_FACTOR_REQUIRED = _bool("ADMIN_TWO_FACTOR_REQUIRED", True)
        self.TWO_FACTOR_PENDING_SECONDS = int(os.environ.get("TWO_FACTOR_PENDING_SECONDS", "300"))
        self.RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI", self.REDIS_URL)
        self.RATELIMIT_HEADERS_ENABLED = True
        # A worker's order threads and its committer each use a connection for a moment; past pool_size an
        # overflow connection is opened and closed every time (measured: the herd's largest CPU cost).
        self.SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True, "pool_size": 20, "max_overflow": 20}
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", False)
        self.REMEMBER_COOKIE_HTTPONLY = True
        self.REMEMBER_COOKIE_SECURE = self.SESSION_COOKIE_SECURE
        self.WTF_CSRF_TIME_LIMIT = None  # a token lives as long as the session: no surprise 400 on a tab left open
        # Kite's published limits, per API key, kept as settings; every worker shares them through Redis.
        self.KITE_ORDER_LIMITS = os.environ.get("KITE_ORDER_LIMITS", "10/s,400/min,5000/day")
        self.KITE_QUOTE_LIMITS = os.environ.get("KITE_QUOTE_LIMITS", "1/s")
        self.KITE_OTHER_LIMITS = os.environ.get("KITE_OTHER_LIMITS", "10/s")
        self.KITE_TIMEOUT_SECONDS = float(os.environ.get("KITE_TIMEOUT_SECONDS", "7"))
        self.KITE_LOGIN_URL = os.environ.get("KITE_LOGIN_URL", "https://kite.zerodha.com/connect/login")
        # An override only: the feed's session is the Kite account an admin picks on /admin (feeds/session.py).
        self.KITE_FEED_API_KEY = os.environ.get("KITE_FEED_API_KEY", "")
        self.KITE_FEED_ACCESS_TOKEN = os.environ.get("KITE_FEED_ACCESS_TOKEN", "")
        self.PAPER_SLIPPAGE_BPS = float(os.environ.get("PAPER_SLIPPAGE_BPS", "0"))
        # The paper exchange answers like Kite: a round trip of PAPER_LATENCY_MS (±40%), and a MARKET order
        # OPEN for PAPER_FILL_MS before it fills.
        self.PAPER_LATENCY_MS = float(os.environ.get("PAPER_LATENCY_MS", "50"))
        self.PAPER_FILL_MS = float(os.environ.get("PAPER_FILL_MS", "200"))
        # Kite's 2026 order rules: market protection on every MARKET order (-1 = Kite's automatic; checked
        # at start-up), and the algo id SEBI's retail algo framework asks every algo order to carry.
        self.MARKET_PROTECTION = os.environ.get("MARKET_PROTECTION", "-1")
        self.KITE_ALGO_ID = os.environ.get("KITE_ALGO_ID", "")
        # A LIMIT strategy's orders (entry, exit at sell time) when it leaves these unset: the limit this many
        # percent beyond the last price, against the trader (marketable), and turned into MARKET after this
        # many seconds unfilled.
        self.LIMIT_BUFFER_PCT = float(os.environ.get("LIMIT_BUFFER_PCT", "0.1"))
        self.LIMIT_WAIT_SECONDS = float(os.environ.get("LIMIT_WAIT_SECONDS", "3"))
        # Orders a worker process keeps in flight at once (each waits ~50 ms for Kite and ~200 ms for a fill).
        self.ORDER_THREADS = int(os.environ.get("ORDER_THREADS", "256"))
        # Order placement: attempts in all, pauses between them, and how long to follow an order to a
        # final state.
        self.ORDER_ATTEMPTS = int(os.environ.get("ORDER_ATTEMPTS", "3"))
        self.ORDER_RETRY_BACKOFF = [float(x) for x in os.environ.get("ORDER_RETRY_BACKOFF", "0.2,0.5").split(",")]
        self.ORDER_CONFIRM_TIMEOUT = float(os.environ.get("ORDER_CONFIRM_TIMEOUT", "10"))
        # While the broker's pushed updates are arriving, how long to wait for one before polling the order.
        self.ORDER_PUSH_WAIT_SECONDS = float(os.environ.get("ORDER_PUSH_WAIT_SECONDS", "1.0"))
        # A strategy lock lives this long unless its holder renews it (every third of it, while acting).
        self.LOCK_TIMEOUT_SECONDS = float(os.environ.get("LOCK_TIMEOUT_SECONDS", "15"))
        # Market data: FEED=simulated (random walk), csv:PATH (scripted replay) or kite (Kite's ticker).
        self.FEED = os.environ.get("FEED", "kite" if self.BROKER == "kite" else "simulated")
        self.FEED_RATE = float(os.environ.get("FEED_RATE", "1"))  # ticks a second per symbol
        self.FEED_VOLATILITY = float(os.environ.get("FEED_VOLATILITY", "0.0005"))  # per tick, fraction of price
        self.FEED_SEED = int(os.environ.get("FEED_SEED", "42"))
        self.FEED_STALE_SECONDS = float(os.environ.get("FEED_STALE_SECONDS", "10"))
        self.LISTENER_RESYNC_SECONDS = float(os.environ.get("LISTENER_RESYNC_SECONDS", "300"))
        # A strategy still in position this long after its STOPLOSS fired (the job lost, failed or slow) is
        # fired again with the same event id while the price stays breached; the pause doubles up to the max.
        self.STOPLOSS_REFIRE_SECONDS = float(os.environ.get("STOPLOSS_REFIRE_SECONDS", "5"))
        self.STOPLOSS_REFIRE_MAX_SECONDS = float(os.environ.get("STOPLOSS_REFIRE_MAX_SECONDS", "60"))
        # How often the listener writes the stops it has trailed (for a restart and the chart; the stop in force
        # lives in its index): every 100 ms with the prices cost 2x a static stop's tick at 10,000 moving stops.
        self.TRAIL_FLUSH_SECONDS = float(os.environ.get("TRAIL_FLUSH_SECONDS", "0.5"))
        # Instruments held in position with no ticks (stale, or no feed at all) are priced by REST quotes this
        # often (the shared rate limiter keeps each API key within KITE_QUOTE_LIMITS).
        self.FEED_QUOTE_SECONDS = float(os.environ.get("FEED_QUOTE_SECONDS", "1"))
        # How often the listener rereads the market-data account an admin picked: a morning login's new
        # access token is used without a restart.
        self.FEED_SESSION_CHECK_SECONDS = float(os.environ.get("FEED_SESSION_CHECK_SECONDS", "30"))
        # Recovery: how late a BUY may still run after downtime, and how often the reconciler runs.
        self.MISSED_ENTRY_GRACE_SECONDS = float(os.environ.get("MISSED_ENTRY_GRACE_SECONDS", "60"))
        # Kite's intraday (MIS) square-off for equity (KITE.md): MIS times at or after it are refused, no MIS
        # order is sent after it, and an MIS position still open this long before it is squared off by us.
        self.MIS_CUTOFF = os.environ.get("MIS_CUTOFF", "15:20:00")
        self.MIS_SQUARE_OFF_LEAD_SECONDS = float(os.environ.get("MIS_SQUARE_OFF_LEAD_SECONDS", "60"))
        # An exit keeps trying until it is done or its market shuts; its pauses grow to this.
        self.EXIT_RETRY_MAX_SECONDS = float(os.environ.get("EXIT_RETRY_MAX_SECONDS", "30"))
        self.RECONCILE_SECONDS = float(os.environ.get("RECONCILE_SECONDS", "30"))
        # Recurring deployment (webapp/services/deploy.py): a deployed strategy's run of the day is begun (its
        # broker session and START's checks asked) this long before its buy time; the deployer looks for
        # runs to begin every DEPLOY_CHECK_SECONDS.
        self.RUN_ARM_SECONDS = float(os.environ.get("RUN_ARM_SECONDS", "120"))
        self.DEPLOY_CHECK_SECONDS = float(os.environ.get("DEPLOY_CHECK_SECONDS", "5"))
        # Risk limits (webapp/services/risk.py): how often the scheduler's risk watcher totals each user's day
        # (realised + open positions at the last price) against their daily loss limit, during market hours;
        # and how long it waits for a user's START to finish (keys.user_lock) before halting them anyway.
        self.RISK_CHECK_SECONDS = float(os.environ.get("RISK_CHECK_SECONDS", "1"))
        self.RISK_LOCK_WAIT_SECONDS = float(os.environ.get("RISK_LOCK_WAIT_SECONDS", "2"))
        # Notifications (webapp/services/notifications.py, sent by jobs/notifier.py). Telegram: the operator's one
        # bot (its token from @BotFather); users link their chat with a one-time code. Email: an SMTP relay.
        # A channel left unconfigured is not offered.
        self.PUBLIC_URL = os.environ.get("PUBLIC_URL", f"http://127.0.0.1:{os.environ.get('PORT', '5000')}").rstrip("/")
        self.TELEGRAM_BOT_TOKEN = os.environ.get("TELEGRAM_BOT_TOKEN", "")
        self.TELEGRAM_BOT_USERNAME = os.environ.get("TELEGRAM_BOT_USERNAME", "")  # for a t.me link on the page
        self.TELEGRAM_API_ROOT = os.environ.get("TELEGRAM_API_ROOT", "https://api.telegram.org")
        self.SMTP_HOST = os.environ.get("SMTP_HOST", "")
        self.SMTP_PORT = int(os.environ.get("SMTP_PORT", "587"))
        self.SMTP_USER = os.environ.get("SMTP_USER", "")
        self.SMTP_PASSWORD = os.environ.get("SMTP_PASSWORD", "")
        self.SMTP_STARTTLS = _bool("SMTP_STARTTLS", True)
        self.SMTP_FROM = os.environ.get("SMTP_FROM", "Algo <alerts@localhost>")
        # Each user's messages on a channel: at most this many a minute (the rest wait their turn); a failed
        # send is tried again after 2, 4, 8 ... s (up to NOTIFY_RETRY_MAX_SECONDS), NOTIFY_MAX_ATTEMPTS times.
        self.NOTIFY_PER_MINUTE = int(os.environ.get("NOTIFY_PER_MINUTE", "20"))
        self.NOTIFY_MAX_ATTEMPTS = int(os.environ.get("NOTIFY_MAX_ATTEMPTS", "8"))
        self.NOTIFY_RETRY_MAX_SECONDS = float(os.environ.get("NOTIFY_RETRY_MAX_SECONDS", "300"))
        # The morning "log in to Kite" reminder (IST, trading days, Kite accounts whose session is not valid).
        self.LOGIN_REMINDER_TIME = os.environ.get("LOGIN_REMINDER_TIME", "08:45:00")
        self.TELEGRAM_POLL_SECONDS = int(os.environ.get("TELEGRAM_POLL_SECONDS", "20"))  # getUpdates long poll
        self.LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
        # Prometheus metrics (webapp/metrics.py, served at /metrics): the directory every process writes to,
        # emptied by jobs/run_all.py at system start; a scrape must send "Authorization: Bearer METRICS_TOKEN"
        # when it is set (empty: open, so bind the web to localhost or a private network).
        self.METRICS_DIR = str(metrics_dir(self.INSTANCE_DIR))
        self.METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k.isupper()}
