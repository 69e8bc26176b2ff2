"""Symbol ↔ instrument lookups. Paper mode reads the small NSE list shipped in webapp/data (Kite's
instruments CSV layout), so a strategy can be validated with no broker account."""
from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

import redis

from webapp import keys

# Kite's CSV layout; its last_price column is the paper exchange's price before the first tick arrives.
PAPER_INSTRUMENTS = Path(os.environ.get("PAPER_INSTRUMENTS_FILE", Path(__file__).parent / "data" / "nse_instruments.csv"))


@dataclass(frozen=True)
class Instrument:
    instrument_token: int
    tradingsymbol: str
    name: str
    exchange: str
    last_price: Decimal
    tick_size: Decimal
    lot_size: int


def parse_kite_csv(text: str) -> list[Instrument]:
    return [
        Instrument(
            instrument_token=int(row["instrument_token"]),
            tradingsymbol=row["tradingsymbol"],
            name=row["name"],
            exchange=row["exchange"],
            last_price=Decimal(row["last_price"] or "0"),
            tick_size=Decimal(row["tick_size"] or "0.05"),
            lot_size=int(row["lot_size"] or 1),
        )
        for row in csv.DictReader(text.splitlines())
    ]


@lru_cache(maxsize=1)
def paper_catalog() -> dict[tuple[str, str], Instrument]:
    return {(i.exchange, i.tradingsymbol): i for i in parse_kite_csv(PAPER_INSTRUMENTS.read_text())}


def lookup(exchange: str, symbol: str) -> Instrument | None:
    """The paper exchange's instruments (the simulated feed and paper broker know only these)."""
    return paper_catalog().get((exchange.upper(), symbol.upper()))


def exchanges() -> list[str]:
    return sorted({exchange for exchange, _ in paper_catalog()})


KITE_EXCHANGES = ["BSE", "NSE"]
CACHE_TTL_SECONDS = 36 * 3600


def kite_lookup(conn: redis.Redis, exchange: str, symbol: str, fetch: Callable[[str], list[dict]],
                day: str) -> Instrument | None:
    """Kite's instrument list for the day, fetched once (by whichever process asks first) and cached in
    Redis for every process: `instruments(exchange)` is a large CSV."""
    key = keys.instruments_cache(exchange, day)
    raw = conn.hget(key, symbol)
    if raw is None and not conn.exists(key):
        rows = {i["tradingsymbol"]: "|".join(str(i.get(f) or "") for f in _CACHED) for i in fetch(exchange)}
        if rows:
            pipe = conn.pipeline()
            pipe.hset(key, mapping=rows)
            pipe.expire(key, CACHE_TTL_SECONDS)
            pipe.execute()
        raw = rows.get(symbol, "").encode() or None
    if raw is None:
        return None
    token, name, last_price, tick_size, lot_size = raw.decode().split("|")
    return Instrument(int(token), symbol, name, exchange, Decimal(last_price or "0"), Decimal(tick_size or "0.05"),
                      int(lot_size or 1))


_CACHED = ("instrument_token", "name", "last_price", "tick_size", "lot_size")
