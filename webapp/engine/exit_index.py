"""In-position strategies' exit levels per instrument, for the listener's hot path.

Each instrument keeps two sorted lists: levels that fire when the price falls to or through them (a long's
stop, a short's target, a short's next trailing move) and levels that fire when it rises to or through them
(a short's stop, a long's target and next trailing move). A tick that crosses nothing costs one dict lookup
and a comparison against the nearest level on each side, however many strategies are indexed. Every entry
is (level, strategy id, kind), so one is found by bisection; a per-strategy record of its entries makes
removing a strategy O(log n) comparisons (and a memmove), never a Python scan of the instrument."""
from __future__ import annotations

from bisect import bisect_left, insort

FALL, RISE = 0, 1  # fires when the price falls to/through the level; when it rises to/through it
STOP, TARGET, TRAIL = 0, 1, 2  # what an entry is; a stop sorts first, so on one tick the stop wins


class ExitIndex:
    def __init__(self) -> None:
        # instrument key → (falling, rising): ascending [(key, strategy_id, kind)], key = level when falling,
        # -level when rising, so on both sides the entries a price crosses are the tail: key ≥ probe.
        self._lists: dict[str, tuple[list[tuple[float, int, int]], list[tuple[float, int, int]]]] = {}
        # strategy id → (instrument key, {kind: (side, entry)})
        self._records: dict[int, tuple[str, dict[int, tuple[int, tuple[float, int, int]]]]] = {}

    def set(self, key: str, strategy_id: int, kind: int, side: int, level: float) -> None:
        """Indexes (or moves) one entry of a strategy."""
        record = self._records.get(strategy_id)
        if record is not None and record[0] != key:
            self.remove(strategy_id)
            record = None
        if record is None:
            record = self._records[strategy_id] = (key, {})
        entries = record[1]
        lists = self._lists.get(key)
        if lists is None:
            lists = self._lists[key] = ([], [])
        old = entries.get(kind)
        if old is not None:
            self._delete(lists[old[0]], old[1])
        entry = (level if side == FALL else -level, strategy_id, kind)
        insort(lists[side], entry)
        entries[kind] = (side, entry)

    def discard(self, strategy_id: int, kind: int) -> None:
        """Forgets one entry of a strategy (e.g. a trailing stop that can move no further)."""
        record = self._records.get(strategy_id)
        if record is None or kind not in record[1]:
            return
        side, entry = record[1].pop(kind)
        lists = self._lists[record[0]]
        self._delete(lists[side], entry)
        if not record[1]:
            del self._records[strategy_id]
        if not lists[0] and not lists[1]:
            del self._lists[record[0]]

    def remove(self, strategy_id: int) -> None:
        record = self._records.pop(strategy_id, None)
        if record is None:
            return
        key, entries = record
        lists = self._lists[key]
        for side, entry in entries.values():
            self._delete(lists[side], entry)
        if not lists[0] and not lists[1]:
            del self._lists[key]

    @staticmethod
    def _delete(entries: list[tuple[float, int, int]], entry: tuple[float, int, int]) -> None:
        at = bisect_left(entries, entry)
        if at < len(entries) and entries[at] == entry:
            del entries[at]

    def pop_crossed(self, key: str, price: float) -> list[tuple[int, int, float]]:
        """Every (strategy_id, kind, level) the price is at or beyond, removed so it does not fire twice."""
        lists = self._lists.get(key)
        if lists is None:
            return []
        falling, rising = lists
        crossed: list[tuple[int, int, float]] = []
        if falling and falling[-1][0] >= price:
            cut = bisect_left(falling, (price,))
            crossed += [(sid, kind, level) for level, sid, kind in falling[cut:]]
            del falling[cut:]
        if rising and rising[-1][0] >= -price:
            cut = bisect_left(rising, (-price,))
            crossed += [(sid, kind, -level) for level, sid, kind in rising[cut:]]
            del rising[cut:]
        if not crossed:
            return crossed
        records = self._records
        for sid, kind, _ in crossed:
            entries = records[sid][1]
            del entries[kind]
            if not entries:
                del records[sid]
        if not falling and not rising:
            del self._lists[key]
        return crossed

    def levels(self, strategy_id: int) -> dict[int, float]:
        """kind → level of a strategy's indexed entries."""
        record = self._records.get(strategy_id)
        if record is None:
            return {}
        return {kind: entry[0] if side == FALL else -entry[0] for kind, (side, entry) in record[1].items()}

    def __contains__(self, strategy_id: int) -> bool:
        return strategy_id in self._records

    def __len__(self) -> int:
        """Strategies with at least one entry indexed."""
        return len(self._records)
