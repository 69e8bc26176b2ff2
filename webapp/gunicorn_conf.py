"""Gunicorn settings the command line cannot carry (Procfile: `gunicorn -c python:webapp.gunicorn_conf ...`):
Prometheus's multiprocess bookkeeping. The master hands its workers the one metrics directory
(PROMETHEUS_MULTIPROC_DIR, see webapp/metrics.py) and, when a worker exits, drops its live-gauge files.
Every other setting stays on the Procfile's command line. The directory is emptied by jobs/run_all.py when the
whole system starts, never here: a web process restarted alone must not wipe the other processes' totals."""
from __future__ import annotations

import os as _os
from pathlib import Path as _Path

from webapp.config import ROOT as _ROOT, metrics_dir as _metrics_dir

# Imported under underscore names: gunicorn reads this module's public globals as settings.
_os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(_metrics_dir(_Path(_os.environ.get("INSTANCE_DIR", _ROOT / "instance"))))
)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
