"""Kite's ticker (the official kiteconnect.KiteTicker) behind the MarketFeed boundary.

One service-level connection (KITE_FEED_API_KEY / KITE_FEED_ACCESS_TOKEN) serves every user: a tick is
the same whoever holds the symbol, Kite allows 3 connections per API key and 3,000 instruments per
connection, and per-user connections would tie each user's market data to that user's daily login.
KiteTicker runs on Twisted's reactor in a thread of its own; subscription changes are handed to that
thread with callFromThread, as Twisted requires."""
from __future__ import annotations

import logging
import threading
from typing import Callable

from kiteconnect import KiteTicker

from webapp.feeds.base import Instrument, Tick, TickHandler

log = logging.getLogger("feed.kite")
MAX_INSTRUMENTS = 3000


class KiteTickerFeed:
    def __init__(self, api_key: str, access_token: str, root: str,
                 on_order_update: Callable[[dict], None] | None = None) -> None:
        if not api_key or not access_token:
            raise ValueError("FEED=kite needs KITE_FEED_API_KEY and KITE_FEED_ACCESS_TOKEN")
        self.ticker = KiteTicker(api_key, access_token, root=root, reconnect=True, reconnect_max_tries=300,
                                 reconnect_max_delay=5)
        self.lock = threading.Lock()
        self.instruments: dict[int, Instrument] = {}
        self.connected = threading.Event()
        self.health: dict[str, object] = {"connected": False, "reconnects": 0, "gave_up": False}
        self.on_order_update = on_order_update

    def start(self, on_ticks: TickHandler) -> None:
        def ticks(_ws, raw: list[dict]) -> None:
            with self.lock:
                known = self.instruments
                batch = [Tick(known[t["instrument_token"]], float(t["last_price"]))
                         for t in raw if t.get("instrument_token") in known and t.get("last_price")]
            if batch:
                on_ticks(batch)

        def connected(ws, _response) -> None:
            self.connected.set()
            self.health["connected"] = True
            tokens = list(self.instruments)
            if tokens:  # a reconnect: KiteTicker resubscribes its own list too; this also sets the mode
                ws.subscribe(tokens)
                ws.set_mode(ws.MODE_LTP, tokens)
            log.info("kite ticker connected", extra={"event": "feed_connected", "instruments": len(tokens)})

        def closed(_ws, code: int, reason: str) -> None:
            self.health["connected"] = False
            log.warning("kite ticker closed", extra={"event": "feed_closed", "code": code, "reason": reason})

        def reconnecting(_ws, attempts: int) -> None:
            self.health["reconnects"] = attempts
            log.warning("kite ticker reconnecting", extra={"event": "feed_reconnect", "attempt": attempts})

        def gave_up(_ws) -> None:
            self.health["gave_up"] = True
            log.critical("kite ticker gave up reconnecting", extra={"event": "feed_noreconnect"})

        def error(_ws, code: int, reason: str) -> None:
            log.error("kite ticker error", extra={"event": "feed_error", "code": code, "reason": reason})

        self.ticker.on_ticks = ticks
        self.ticker.on_connect = connected
        self.ticker.on_close = closed
        self.ticker.on_reconnect = reconnecting
        self.ticker.on_noreconnect = gave_up
        self.ticker.on_error = error
        if self.on_order_update is not None:  # the feed account's own orders, pushed as they change
            self.ticker.on_order_update = lambda _ws, data: self.on_order_update(data)
        self.ticker.connect(threaded=True)

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
        if tokens and self.connected.is_set():
            from twisted.internet import reactor

            reactor.callFromThread(self.ticker.subscribe, tokens)
            reactor.callFromThread(self.ticker.set_mode, self.ticker.MODE_LTP, tokens)
        return unknown

    def unsubscribe(self, instruments: list[Instrument]) -> None:
        with self.lock:
            tokens = [i.token for i in instruments if i.token in self.instruments]
            self.instruments = {t: i for t, i in self.instruments.items() if t not in tokens}
        if tokens and self.connected.is_set():
            from twisted.internet import reactor

            reactor.callFromThread(self.ticker.unsubscribe, tokens)

    def stop(self) -> None:
        self.ticker.close()
