"""Stop-losses keep being watched when ticks stop. The listener hands this poller every instrument held in
position whose feed is stale (or that has no feed at all); the poller prices them by REST quotes (Kite's
`ltp`, up to 1,000 instruments a call) every FEED_QUOTE_SECONDS on a thread of its own, and gives the
prices back to the listener as ticks that do not count as the feed's, so the same stop index fires.

Whose session: the feed's (one call prices everything, and users' quote budgets stay theirs), then each
holder's own session for whatever is left, fullest first. Every call takes its turn under the shared
rate limiter's quote limit (KITE_QUOTE_LIMITS, Kite's 1 request/s per API key). In paper mode the paper
exchange answers: the last price it would fill at."""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Iterator

from flask import Flask

from webapp.brokers import Broker, BrokerError, Credentials, get_broker
from webapp.feeds.base import Instrument, Tick
from webapp.feeds.session import FeedSession

log = logging.getLogger("feed.quotes")


@dataclass(frozen=True)
class Wanted:
    instrument: Instrument
    accounts: frozenset[int]  # the broker accounts holding it in position


class QuotePoller:
    def __init__(self, app: Flask, wanted: Callable[[], list[Wanted]], deliver: Callable[[list[Tick]], None],
                 session: Callable[[], FeedSession | None]) -> None:
        self.app = app
        self.wanted = wanted
        self.deliver = deliver
        self.session = session
        self.stopped = threading.Event()
        self.feed_broker: tuple[FeedSession, Broker] | None = None
        self.unpriced: frozenset[str] = frozenset()

    def start(self) -> None:
        threading.Thread(target=self._run, name="quote-poller", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        period = self.app.config["FEED_QUOTE_SECONDS"]
        while not self.stopped.is_set():
            began = time.monotonic()
            try:
                wanted = self.wanted()
                if wanted:
                    ticks = self.poll(wanted)
                    if ticks:
                        self.deliver(ticks)
            except Exception:  # noqa: BLE001 — this thread must outlive any one failure (Redis, database)
                log.exception("quote round failed", extra={"event": "feed_quotes_error"})
            self.stopped.wait(max(0.0, began + period - time.monotonic()))

    def poll(self, wanted: list[Wanted]) -> list[Tick]:
        with self.app.app_context():
            prices = self._prices(wanted)
        missing = frozenset(w.instrument.key for w in wanted if w.instrument.key not in prices)
        if missing != self.unpriced:
            self.unpriced = missing
            if missing:
                log.critical("stop-losses unwatched: no quote source could price these instruments", extra={
                    "event": "feed_quotes_unpriced", "instruments": sorted(missing)})
        return [Tick(w.instrument, float(prices[w.instrument.key])) for w in wanted if w.instrument.key in prices]

    def _prices(self, wanted: list[Wanted]) -> dict[str, Decimal]:
        names = [w.instrument.key for w in wanted]
        if self.app.config["BROKER"] == "paper":
            return get_broker("paper").quotes(names)
        prices: dict[str, Decimal] = {}
        for source, broker, covers in self._sources(wanted):
            left = [name for name in covers if name not in prices]
            if not left:
                continue
            try:
                prices.update(broker.quotes(left))
            except BrokerError as exc:
                log.error("quotes failed", extra={"event": "feed_quotes_error", "source": source,
                                                  "instruments": len(left), "error": str(exc)})
            if len(prices) == len(names):
                break
        return prices

    def _sources(self, wanted: list[Wanted]) -> Iterator[tuple[str, Broker, list[str]]]:
        session = self.session()
        if session is not None:
            yield session.source, self._feed(session), [w.instrument.key for w in wanted]
        held: dict[int, list[str]] = defaultdict(list)
        for w in wanted:
            for account_id in w.accounts:
                held[account_id].append(w.instrument.key)
        for account_id, names in sorted(held.items(), key=lambda item: -len(item[1])):
            try:
                broker = get_broker("kite", account_id)
            except BrokerError:
                continue  # no session on this account: a holder who must log in again
            yield f"broker account #{account_id}", broker, names

    def _feed(self, session: FeedSession) -> Broker:
        """One client per feed session: its kept-alive connection serves every round."""
        if self.feed_broker is None or self.feed_broker[0] != session:
            self.feed_broker = session, get_broker("kite", credentials=Credentials(session.api_key, "",
                                                                                   session.access_token))
        return self.feed_broker[1]
