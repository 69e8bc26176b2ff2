"""`make run`'s process supervisor: runs each line of the Procfile and, when one process exits, starts it
again without touching the others. A process that keeps crashing waits longer each time (1 s doubling to
60 s, afresh once it has run 30 s), so a broken one is retried, logged, but never in a hot loop. On stop:
SIGTERM to every process, SIGKILL to what is left after a grace period. Production leaves this job to
systemd (README, "Processes")."""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jobs.resilience import Backoff

log = logging.getLogger("supervisor")
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
POLL_SECONDS = 0.1
# Long enough for a worker to see its orders in flight to a final state, and for gunicorn's own grace.
STOP_GRACE_SECONDS = 30.0


def read_procfile(path: Path) -> dict[str, str]:
    """`name: command` lines, in order; anything else (comments, blanks) is skipped."""
    lines = (PROCFILE_LINE.match(line) for line in path.read_text().splitlines())
    return {match.group(1): match.group(2).strip() for match in lines if match}


def restart_backoff() -> Backoff:
    return Backoff(first=1.0, longest=60.0, healthy=30.0)


@dataclass
class Child:
    name: str
    command: str
    backoff: Backoff
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, commands: dict[str, str], cwd: Path, backoff: Callable[[], Backoff] = restart_backoff,
                 stop_grace: float = STOP_GRACE_SECONDS) -> None:
        self.cwd = cwd
        self.stop_grace = stop_grace
        self.children = {name: Child(name, command, backoff()) for name, command in commands.items()}

    def run(self, stop: list[bool]) -> None:
        """Starts every process and keeps them running until `stop` is set; then stops them all."""
        try:
            for child in self.children.values():
                self._start(child)
            while not stop:
                self._tend(time.monotonic())
                time.sleep(POLL_SECONDS)
        finally:
            self._stop_all()

    def _tend(self, now: float) -> None:
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start(child)
            elif child.proc is not None and child.proc.poll() is not None:
                pause = child.backoff.after_failure(now - child.started_at)
                child.restart_at = now + pause
                log.error("process exited; restarting it", extra={
                    "event": "process_exited", "child": child.name, "child_pid": child.proc.pid,
                    "returncode": child.proc.returncode, "restart_in_seconds": pause})

    def _start(self, child: Child) -> None:
        # `exec`: the pid is the process itself, not a shell (the Procfile's ${PORT:-5000} needs the shell).
        # A session of its own: Ctrl-C reaches only this supervisor, which stops everything in order.
        child.proc = subprocess.Popen(["/bin/sh", "-c", f"exec {child.command}"], cwd=self.cwd,
                                      start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("process started", extra={"event": "process_started", "child": child.name,
                                           "child_pid": child.proc.pid, "command": child.command})

    def _stop_all(self) -> None:
        running = [c for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
        for child in running:
            child.proc.send_signal(signal.SIGTERM)  # the leader only: gunicorn and RQ stop their own children
        deadline = time.monotonic() + self.stop_grace
        for child in running:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("process did not stop in time; killing it", extra={
                    "event": "process_killed", "child": child.name, "child_pid": child.proc.pid})
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
            log.info("process stopped", extra={"event": "process_stopped", "child": child.name,
                                               "child_pid": child.proc.pid, "returncode": child.proc.returncode})
