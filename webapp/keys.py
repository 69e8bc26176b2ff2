"""Every Redis key and channel name, in one place (DESIGN.md section 3). The prefix lets tests and
several deployments share one server."""
from __future__ import annotations

import os

PREFIX = os.environ.get("REDIS_PREFIX", "")


def strategy(strategy_id: int) -> str:
    return f"{PREFIX}strategy:{strategy_id}"


def runtime(strategy_id: int) -> str:
    return f"{PREFIX}runtime:{strategy_id}"


def runtime_lock(strategy_id: int) -> str:
    return f"{PREFIX}runtime:{strategy_id}:lock"


def symbol_strategies(symbol: str) -> str:
    return f"{PREFIX}symbol:{symbol}:strategies"


def last_price(exchange: str, symbol: str) -> str:
    return f"{PREFIX}price:{exchange}:{symbol}"


def schedule_job_id(strategy_id: int, event: str) -> str:
    return f"strategy-{strategy_id}-{event}"  # RQ job ids allow letters, digits, _ and - only


def paper_order(order_id: str) -> str:
    return f"{PREFIX}paper:order:{order_id}"


def paper_tag(account_id: int, tag: str) -> str:
    return f"{PREFIX}paper:tag:{account_id}:{tag}"


def paper_faults() -> str:
    """A list of faults the paper exchange plays back, one per order placement (chaos and tests)."""
    return f"{PREFIX}paper:faults"


def paper_followup_faults() -> str:
    """Faults the paper exchange plays back on follow-up calls (order status, orders by tag), one per call."""
    return f"{PREFIX}paper:faults:followup"


def paper_positions(account: str) -> str:
    """The paper exchange's net position per "EXCHANGE:SYMBOL:PRODUCT" for one account (moved at each fill)."""
    return f"{PREFIX}paper:positions:{account}"


def paper_sequence() -> str:
    return f"{PREFIX}paper:seq"


def order_update(order_id: str) -> str:
    """The latest pushed state of a broker order (postback, ticker order frame, paper fill), JSON."""
    return f"{PREFIX}order-update:{order_id}"


ORDER_UPDATES = f"{PREFIX}order-updates"  # channel: every pushed order state, for the engine's waiters
RUNTIME_CHANNEL = f"{PREFIX}runtime-changed"
RUNTIME_SEQUENCE = f"{PREFIX}runtime-changed:seq"  # numbers the messages, so a listener sees a gap
SCHEDULER_WAKEUP = f"{PREFIX}scheduler:wakeup"
SCHEDULER_HEARTBEAT = f"{PREFIX}heartbeat:scheduler"
LISTENER_HEARTBEAT = f"{PREFIX}heartbeat:listener"
LISTENER_SUBSCRIBED = f"{PREFIX}listener:subscribed"  # EXCHANGE:SYMBOL the feed is subscribed to
FEED_STALE = f"{PREFIX}feed:stale"  # hash EXCHANGE:SYMBOL → ISO time since when no tick has come


def symbol_index_pattern() -> str:
    return f"{PREFIX}symbol:*:strategies"


def rate_limit(api_key: str, kind: str, window_ms: int) -> str:
    return f"{PREFIX}ratelimit:{api_key}:{kind}:{window_ms}"


def instruments_cache(exchange: str, day: str) -> str:
    return f"{PREFIX}instruments:{exchange}:{day}"


def ticks(exchange: str, symbol: str, day: str) -> str:
    """Today's price samples for the chart: a list of "epoch_ms:price", oldest first."""
    return f"{PREFIX}ticks:{exchange}:{symbol}:{day}"


def stop_moves(strategy_id: int, run_id: int) -> str:
    """One run's trailing stop as the listener moved it, for the chart: a list of "epoch_ms:price", oldest
    first (the stop resolved at the entry fill is the run's stop_price, not in here)."""
    return f"{PREFIX}stop-moves:{strategy_id}:{run_id}"


def user_lock(user_id: int) -> str:
    """Held while a user's START counts their running strategies and commits its run, and while the risk
    watcher halts the user (webapp/services/risk.py): one user's STARTs and halt are taken one at a time."""
    return f"{PREFIX}user:{user_id}:lock"


def telegram_link(code: str) -> str:
    """A one-time code a user sends the bot to link their chat (→ user id), expiring."""
    return f"{PREFIX}telegram:link:{code}"


def telegram_link_tries(chat_id: int) -> str:
    """Wrong link codes a chat sent lately (a counter that expires)."""
    return f"{PREFIX}telegram:link-tries:{chat_id}"


def telegram_confirm(chat_id: int) -> str:
    """A Telegram command waiting for its confirmation code (JSON: command, code), expiring."""
    return f"{PREFIX}telegram:confirm:{chat_id}"


TELEGRAM_OFFSET = f"{PREFIX}telegram:offset"  # the next getUpdates offset: updates before it are handled
NOTIFIER_HEARTBEAT = f"{PREFIX}heartbeat:notifier"
