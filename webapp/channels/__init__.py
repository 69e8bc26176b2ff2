"""Where notifications leave the system (the network edge, like brokers/ and feeds/): Telegram's Bot API and
SMTP. Each raises ChannelError; whether and when to try again is the notifier's decision."""
from __future__ import annotations


class ChannelError(Exception):
    """A message not delivered. `retry`: the channel may take it later (a 5xx, 429, a timeout, a 4xx SMTP
    answer); `retry_after`: seconds the channel asked us to wait, if it said."""

    def __init__(self, message: str, retry: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after
