"""Secrets that must survive restarts but may not be committed: read from the environment, else from a
0600 file under instance/, generated on first use."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def load_or_create(env_name: str, path: Path, generate: Callable[[], str]) -> str:
    value = os.environ.get(env_name)
    if value:
        return value
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = generate()
    # O_EXCL: if two processes start at once, exactly one writes and the other reads its value.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value
