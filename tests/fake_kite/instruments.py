"""The fake's instrument master and market data, in Kite's shapes.

Tokens are Kite's real ones for these scrips (instrument_token = exchange_token << 8 | segment), so a
test that hard-codes 408065 for NSE:INFY means the same thing here as on the real Kite."""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

CSV_HEADER = ("instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,lot_size,"
              "instrument_type,segment,exchange")

# Ticker segment codes (instrument_token & 0xFF), as kiteconnect.KiteTicker.EXCHANGE_MAP.
SEGMENT_CODES = {"NSE": 1, "NFO": 2, "CDS": 3, "BSE": 4, "BFO": 5, "BCD": 6, "MCX": 7, "MCXSX": 8,
                 "INDICES": 9, "NCO": 12}
INDEX_SEGMENT = 9


def price_divisor(instrument_token: int) -> float:
    """What the ticker divides a packed price by (paise for equities): KiteTicker._parse_binary."""
    segment = instrument_token & 0xFF
    if segment == SEGMENT_CODES["CDS"]:
        return 10_000_000.0
    if segment in (SEGMENT_CODES["BCD"], SEGMENT_CODES["NCO"]):
        return 10_000.0
    return 100.0


@dataclass
class Instrument:
    """One row of Kite's instrument dump."""
    instrument_token: int
    exchange_token: int
    tradingsymbol: str
    name: str
    exchange: str
    segment: str
    instrument_type: str = "EQ"
    tick_size: float = 0.05
    lot_size: int = 1
    expiry: str = ""
    strike: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.tradingsymbol}"

    @property
    def is_index(self) -> bool:
        return self.instrument_token & 0xFF == INDEX_SEGMENT


@dataclass
class MarketData:
    """The live state of one instrument: what /quote answers and what the ticker packs."""
    last_price: float
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    volume: int = 0
    last_quantity: int = 0
    average_price: float = 0.0
    buy_quantity: int = 0
    sell_quantity: int = 0
    oi: int = 0
    oi_day_high: int = 0
    oi_day_low: int = 0
    last_trade_time: float = field(default_factory=time.time)
    timestamp: float = field(default_factory=time.time)

    @classmethod
    def opening(cls, price: float) -> "MarketData":
        """A plausible session so far: opened at the price, a little range, some volume."""
        return cls(last_price=price, open=price, high=price, low=price, close=round(price * 0.99, 2),
                   volume=100_000, last_quantity=10, average_price=price, buy_quantity=50_000,
                   sell_quantity=48_000)

    def update(self, price: float, quantity: int | None = None, now: float | None = None, **fields: float) -> None:
        """A trade at `price` (and any field overrides: open, high, low, close, volume, oi, ...)."""
        now = time.time() if now is None else now
        quantity = (self.last_quantity or 1) if quantity is None else quantity
        traded_value = self.average_price * self.volume + price * quantity
        self.volume += quantity
        self.average_price = round(traded_value / self.volume, 2) if self.volume else price
        self.last_price = price
        self.last_quantity = quantity
        self.high = max(self.high or price, price)
        self.low = min(self.low or price, price)
        self.open = self.open or price
        self.last_trade_time = self.timestamp = now
        for name, value in fields.items():
            if not hasattr(self, name):
                raise TypeError(f"unknown market data field {name!r}")
            setattr(self, name, value)

    def depth(self, tick_size: float) -> dict[str, list[dict]]:
        """Five synthetic levels each side around the last price, in Kite's depth shape."""
        step = tick_size or 0.05
        buy = [{"price": round(self.last_price - step * (n + 1), 2), "quantity": 100 * (n + 1), "orders": n + 1}
               for n in range(5)]
        sell = [{"price": round(self.last_price + step * (n + 1), 2), "quantity": 120 * (n + 1), "orders": n + 2}
                for n in range(5)]
        return {"buy": buy, "sell": sell}


# (instrument, opening last price). Indices carry tick_size 0 and lot_size 0, as in Kite's dump.
DEFAULT_INSTRUMENTS: list[tuple[Instrument, float]] = [
    (Instrument(408065, 1594, "INFY", "INFOSYS", "NSE", "NSE"), 1520.50),
    (Instrument(738561, 2885, "RELIANCE", "RELIANCE INDUSTRIES", "NSE", "NSE"), 2950.25),
    (Instrument(2953217, 11536, "TCS", "TATA CONSULTANCY SERV LT", "NSE", "NSE"), 4100.00),
    (Instrument(341249, 1333, "HDFCBANK", "HDFC BANK", "NSE", "NSE"), 1650.40),
    (Instrument(779521, 3045, "SBIN", "STATE BANK OF INDIA", "NSE", "NSE"), 810.15),
    (Instrument(256265, 1001, "NIFTY 50", "NIFTY 50", "NSE", "INDICES", tick_size=0.0, lot_size=0), 24500.00),
    (Instrument(128053508, 500209, "INFY", "INFOSYS", "BSE", "BSE"), 1520.60),
]


def render_csv(rows: list[tuple[Instrument, MarketData]]) -> bytes:
    """Kite's instrument dump: the header, then one line per instrument, `name` quoted as Kite does."""
    lines = [CSV_HEADER]
    for inst, market in rows:
        name = '"' + inst.name.replace('"', '""') + '"'
        lines.append(",".join([
            str(inst.instrument_token), str(inst.exchange_token), inst.tradingsymbol, name,
            _num(market.last_price), inst.expiry, _num(inst.strike), _num(inst.tick_size), str(inst.lot_size),
            inst.instrument_type, inst.segment, inst.exchange]))
    return ("\n".join(lines) + "\n").encode()


def load_csv(path: str | Path) -> list[tuple[Instrument, float]]:
    """Instruments from a file in Kite's dump layout (e.g. the app's paper catalogue)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    out = []
    for row in rows:
        out.append((Instrument(
            instrument_token=int(row["instrument_token"]), exchange_token=int(row["exchange_token"]),
            tradingsymbol=row["tradingsymbol"], name=row["name"], exchange=row["exchange"], segment=row["segment"],
            instrument_type=row["instrument_type"], tick_size=float(row["tick_size"] or 0),
            lot_size=int(row["lot_size"] or 0), expiry=row["expiry"], strike=float(row["strike"] or 0)),
            float(row["last_price"] or 0)))
    return out


def _num(value: float) -> str:
    return format(value, ".10g")
