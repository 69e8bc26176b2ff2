"""Kite's ticker (the official kiteconnect.KiteTicker) behind the MarketFeed boundary.

One service-level connection serves every user: a tick is the same whoever holds the symbol, Kite allows 3
connections per API key and 3,000 instruments per connection, and per-user connections would tie each
user's market data to that user's daily login. Its session is the admin-picked account's (or the
KITE_FEED_* override: webapp/feeds/session.py) and may change while the process runs (the morning login);
`use()` then closes the old link and opens one with the new token, resubscribing every instrument. With no
session at all the feed is idle: nothing ticks, and the listener watches stops by REST quotes.

KiteTicker runs on Twisted's reactor in a thread of its own; a reactor cannot be restarted, so one reactor
serves every link this process opens, and everything touching a link is handed to that thread with
callFromThread, as Twisted requires."""
from __future__ import annotations

import logging
import threading
from typing import Callable

from kiteconnect import KiteTicker

from webapp.feeds.base import Instrument, Tick, TickHandler
from webapp.feeds.session import FeedSession

log = logging.getLogger("feed.kite")
MAX_INSTRUMENTS = 3000


class KiteTickerFeed:
    def __init__(self, root: str, on_order_update: Callable[[dict], None] | None = None) -> None:
        self.root = root
        self.on_order_update = on_order_update
        self.lock = threading.Lock()
        self.instruments: dict[int, Instrument] = {}
        self.session: FeedSession | None = None
        self.told = False  # use() has been called: the first call always says what the feed is
        self.ticker: KiteTicker | None = None
        self.connected = threading.Event()
        self.on_ticks: TickHandler | None = None
        self.reactor_running = False
        self.health: dict[str, object] = {"connected": False, "reconnects": 0, "gave_up": False, "source": None,
                                          "reason": "not started"}

    @property
    def idle(self) -> bool:
        """No session: nothing will tick until an account is picked or logs in."""
        return self.session is None

    def start(self, on_ticks: TickHandler) -> None:
        self.on_ticks = on_ticks
        if self.session is not None:
            self._connect()

    def use(self, session: FeedSession | None, reason: str = "") -> None:
        """Switch to this session (None: no feed, for `reason`). The same session again changes nothing,
        unless its link gave up reconnecting: then it is tried afresh."""
        if self.told and session == self.session and not self.health["gave_up"]:
            self.health["reason"] = reason
            return
        self.told = True
        old, self.ticker, self.session = self.ticker, None, session
        self.connected.clear()
        self.health.update(connected=False, reconnects=0, gave_up=False,
                           source=session.source if session else None, reason=reason)
        if old is not None:
            self._on_reactor(old.close)
        if session is None:
            log.critical("no market feed: stop-losses are watched by REST quotes", extra={
                "event": "feed_none", "reason": reason})
        else:
            log.info("market feed session", extra={"event": "feed_session", "source": session.source})
            if self.on_ticks is not None:
                self._connect()

    def _connect(self) -> None:
        session = self.session
        ticker = self.ticker = KiteTicker(session.api_key, session.access_token, root=self.root, reconnect=True,
                                          reconnect_max_tries=300, reconnect_max_delay=5)
        self._wire(ticker)
        if self.reactor_running:
            self._on_reactor(lambda: ticker.connect(threaded=True))
        else:
            self.reactor_running = True
            ticker.connect(threaded=True)  # starts the process's one reactor thread

    def _wire(self, ticker: KiteTicker) -> None:
        """Callbacks from a link this feed has since replaced are ignored: only the current one reports."""
        def current(ws: KiteTicker) -> bool:
            return ws is self.ticker

        def ticks(ws: KiteTicker, raw: list[dict]) -> None:
            if not current(ws):
                return
            with self.lock:
                known = self.instruments
                batch = [Tick(known[t["instrument_token"]], float(t["last_price"]))
                         for t in raw if t.get("instrument_token") in known and t.get("last_price")]
            if batch and self.on_ticks is not None:
                self.on_ticks(batch)

        def connected(ws: KiteTicker, _response: object) -> None:
            if not current(ws):
                return
            self.connected.set()
            self.health["connected"] = True
            tokens = list(self.instruments)
            if tokens:  # a new link, or a reconnect: KiteTicker resubscribes its own list; this sets the mode too
                ws.subscribe(tokens)
                ws.set_mode(ws.MODE_LTP, tokens)
            log.info("kite ticker connected", extra={"event": "feed_connected", "instruments": len(tokens)})

        def closed(ws: KiteTicker, code: int, reason: str) -> None:
            if current(ws):
                self.health["connected"] = False
                log.warning("kite ticker closed", extra={"event": "feed_closed", "code": code, "reason": reason})

        def reconnecting(ws: KiteTicker, attempts: int) -> None:
            if current(ws):
                self.health["reconnects"] = attempts
                log.warning("kite ticker reconnecting", extra={"event": "feed_reconnect", "attempt": attempts})

        def gave_up(ws: KiteTicker) -> None:
            if current(ws):
                self.health["gave_up"] = True
                log.critical("kite ticker gave up reconnecting", extra={"event": "feed_noreconnect"})

        def error(ws: KiteTicker, code: int, reason: str) -> None:
            if current(ws):
                log.error("kite ticker error", extra={"event": "feed_error", "code": code, "reason": reason})

        ticker.on_ticks = ticks
        ticker.on_connect = connected
        ticker.on_close = closed
        ticker.on_reconnect = reconnecting
        ticker.on_noreconnect = gave_up
        ticker.on_error = error
        if self.on_order_update is not None:  # the feed account's own orders, pushed as they change
            ticker.on_order_update = lambda ws, data: self.on_order_update(data) if current(ws) else None

    def subscribe(self, instruments: list[Instrument]) -> list[Instrument]:
        """Instruments without a Kite token are unknown to Kite; past 3,000 the rest are refused (logged)."""
        unknown = [i for i in instruments if not i.token]
        with self.lock:
            room = MAX_INSTRUMENTS - len(self.instruments)
            wanted = [i for i in instruments if i.token and i.token not in self.instruments]
            if len(wanted) > room:
                log.error("over Kite's 3,000 instruments per connection",
                          extra={"event": "feed_full", "refused": [i.key for i in wanted[room:]]})
                wanted = wanted[:max(room, 0)]
            self.instruments = {**self.instruments, **{i.token: i for i in wanted}}
        tokens = [i.token for i in wanted]
        ticker = self.ticker
        if tokens and ticker is not None and self.connected.is_set():
            self._on_reactor(lambda: (ticker.subscribe(tokens), ticker.set_mode(ticker.MODE_LTP, tokens)))
        return unknown

    def unsubscribe(self, instruments: list[Instrument]) -> None:
        with self.lock:
            tokens = [i.token for i in instruments if i.token in self.instruments]
            self.instruments = {t: i for t, i in self.instruments.items() if t not in tokens}
        ticker = self.ticker
        if tokens and ticker is not None and self.connected.is_set():
            self._on_reactor(lambda: ticker.unsubscribe(tokens))

    def stop(self) -> None:
        if self.ticker is not None:
            self.ticker.close()  # the process is ending: sent now, not queued behind the reactor

    def _on_reactor(self, call: Callable[[], object]) -> None:
        if self.reactor_running:
            from twisted.internet import reactor

            reactor.callFromThread(call)
