"""Feeds for paper mode: a seeded random walk per subscribed symbol, or a CSV script replayed in time
(demos and tests). Both know the paper exchange's instruments only, like a real feed knows its own."""
from __future__ import annotations

import csv
import itertools
import math
import random
import threading
import time
from pathlib import Path

from webapp import instruments
from webapp.feeds.base import Instrument, Tick, TickHandler


class _Subscriptions:
    idle = False

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: dict[str, Instrument] = {}
        self.stopped = threading.Event()

    def subscribe(self, wanted: list[Instrument]) -> list[Instrument]:
        unknown = [i for i in wanted if instruments.lookup(i.exchange, i.symbol) is None]
        with self.lock:
            self.active.update({i.key: i for i in wanted if i not in unknown})
        return unknown

    def unsubscribe(self, gone: list[Instrument]) -> None:
        with self.lock:
            for instrument in gone:
                self.active.pop(instrument.key, None)

    def snapshot(self) -> list[Instrument]:
        with self.lock:
            return list(self.active.values())

    def stop(self) -> None:
        self.stopped.set()


class RandomWalkFeed(_Subscriptions):
    """Each subscribed symbol ticks `rate` times a second, starting from its reference price, moving by a
    normal step of `volatility` (a fraction of the price) rounded to the 0.05 tick size."""

    def __init__(self, rate: float = 1.0, volatility: float = 0.0005, seed: int = 42) -> None:
        super().__init__()
        self.rate = rate
        self.volatility = volatility
        self.random = random.Random(seed)
        self.prices: dict[str, float] = {}

    def start(self, on_ticks: TickHandler) -> None:
        threading.Thread(target=self._run, args=(on_ticks,), name="random-walk-feed", daemon=True).start()

    def _step(self, instrument: Instrument) -> float:
        price = self.prices.get(instrument.key)
        if price is None:
            price = float(instruments.lookup(instrument.exchange, instrument.symbol).last_price)
        price = max(0.05, price * math.exp(self.volatility * self.random.gauss(0, 1)))
        price = round(round(price / 0.05) * 0.05, 2)
        self.prices[instrument.key] = price
        return price

    def _run(self, on_ticks: TickHandler) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stopped.is_set():
            ticks = [Tick(i, self._step(i)) for i in self.snapshot()]
            if ticks:
                on_ticks(ticks)
            next_at += period
            self.stopped.wait(max(0.0, next_at - time.monotonic()))


class ScriptedFeed(_Subscriptions):
    """Replays `offset_seconds,symbol,price` rows (exchange NSE unless the symbol says `BSE:...`),
    counted from start(). Rows for symbols not subscribed at their moment are dropped, as a real feed
    would never have sent them."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
        if rows and not _is_number(rows[0][0]):
            rows = rows[1:]  # header
        self.rows = sorted(((float(o), _key(s.strip()), float(p)) for o, s, p in rows), key=lambda r: r[0])

    def start(self, on_ticks: TickHandler) -> None:
        threading.Thread(target=self._run, args=(on_ticks,), name="scripted-feed", daemon=True).start()

    def _run(self, on_ticks: TickHandler) -> None:
        began = time.monotonic()
        for offset, rows in itertools.groupby(self.rows, key=lambda row: row[0]):
            if self.stopped.wait(max(0.0, began + offset - time.monotonic())):
                return
            with self.lock:
                active = dict(self.active)
            ticks = [Tick(active[key], price) for _, key, price in rows if key in active]
            if ticks:
                on_ticks(ticks)


def _key(name: str) -> str:
    exchange, _, symbol = name.rpartition(":")
    return f"{exchange or 'NSE'}:{symbol}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
