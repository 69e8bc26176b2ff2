"""One instance per process of things that own a thread (the order-update subscriber, the paper fills,
the lock keeper, the group committer): made on first use, under a lock, since order threads ask at once."""
from __future__ import annotations

import threading
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")
_instances: dict[Hashable, object] = {}
_guard = threading.Lock()


def one(key: Hashable, make: Callable[[], T]) -> T:
    with _guard:
        if key not in _instances:
            _instances[key] = make()
        return _instances[key]  # type: ignore[return-value]
