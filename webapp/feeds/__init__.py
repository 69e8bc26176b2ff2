"""Chooses the MarketFeed named by the FEED setting."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from webapp.feeds.base import Instrument, MarketFeed, Tick
from webapp.feeds.simulated import RandomWalkFeed, ScriptedFeed

__all__ = ["Instrument", "MarketFeed", "Tick", "get_feed"]


def get_feed(config: dict, on_order_update: Callable[[dict], None] | None = None) -> MarketFeed:
    """FEED=simulated (seeded random walk), FEED=csv:PATH (scripted replay), FEED=kite (Kite's ticker, which
    also pushes its account's order updates to on_order_update; it starts idle, without a session)."""
    name = config["FEED"]
    if name == "simulated":
        return RandomWalkFeed(config["FEED_RATE"], config["FEED_VOLATILITY"], config["FEED_SEED"])
    if name.startswith("csv:"):
        return ScriptedFeed(Path(name[4:]))
    if name == "kite":
        from webapp.feeds.kite import KiteTickerFeed  # Twisted loads only where the Kite feed is used

        # No session yet: the listener gives it one (webapp/feeds/session.py), and again whenever it changes.
        return KiteTickerFeed(config["KITE_TICKER_ROOT"], on_order_update)
    raise ValueError(f"unknown FEED {name!r} (expected 'simulated', 'csv:PATH' or 'kite')")
