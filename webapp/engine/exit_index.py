"""In-position strategies per instrument, ordered by stop price, for the listener's hot path: a tick
that breaches nothing costs one dict lookup and one comparison, however many strategies are indexed."""
from __future__ import annotations

from bisect import bisect_left, insort


class StopIndex:
    def __init__(self) -> None:
        # instrument key → ascending [(stop, strategy_id), ...]
        self._entries: dict[str, list[tuple[float, int]]] = {}

    def add(self, key: str, strategy_id: int, stop: float) -> None:
        self.remove(key, strategy_id)
        insort(self._entries.setdefault(key, []), (stop, strategy_id))

    def remove(self, key: str, strategy_id: int) -> None:
        entries = self._entries.get(key)
        if entries:
            entries[:] = [e for e in entries if e[1] != strategy_id]
            if not entries:
                del self._entries[key]

    def pop_breached(self, key: str, price: float) -> list[tuple[float, int]]:
        """Every (stop, strategy_id) with stop ≥ price, removed so the same breach does not fire twice."""
        entries = self._entries.get(key)
        if not entries or entries[-1][0] < price:
            return []
        cut = bisect_left(entries, (price, -1))
        breached = entries[cut:]
        del entries[cut:]
        if not entries:
            del self._entries[key]
        return breached

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())
