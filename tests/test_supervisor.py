"""`make run`'s supervisor (jobs/supervisor.py) with real processes: one process exiting never stops the
others, a crashed one is back within seconds, one that keeps crashing waits longer each time, and a stop
takes everything down (SIGKILL for what ignores SIGTERM), Redis last."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import redis
import requests

from jobs import redis_server
from jobs.resilience import Backoff
from jobs.supervisor import Supervisor, read_procfile
from tests.conftest import ROOT, wait_for
from webapp import keys


def supervisor_events(caplog: pytest.LogCaptureFixture, event: str, child: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event and getattr(r, "child", None) == child]


def run_in_thread(supervisor: Supervisor) -> tuple[threading.Thread, list[bool]]:
    stop: list[bool] = []
    thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def test_procfile_is_read_in_order_without_comments(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("# a comment\nweb: gunicorn --bind ${HOST:-127.0.0.1}:5000 wsgi:app\n\n"
                        "worker: python -m jobs.worker\n")
    assert read_procfile(procfile) == {"web": "gunicorn --bind ${HOST:-127.0.0.1}:5000 wsgi:app",
                                       "worker": "python -m jobs.worker"}
    assert list(read_procfile(ROOT / "Procfile")) == ["web", "worker", "exits", "scheduler", "listener", "notifier"]


def test_a_process_that_keeps_crashing_is_restarted_with_growing_pauses_and_its_neighbour_runs_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="supervisor")
    supervisor = Supervisor({"crash": "sh -c 'exit 3'", "steady": "sleep 600"}, cwd=tmp_path,
                            backoff=lambda: Backoff(first=0.05, longest=0.2, healthy=30))
    thread, stop = run_in_thread(supervisor)
    wait_for(lambda: len(supervisor_events(caplog, "process_exited", "crash")) >= 5, what="five crashes")
    stop.append(True)
    thread.join(timeout=30)

    exits = supervisor_events(caplog, "process_exited", "crash")[:5]
    assert [r.returncode for r in exits] == [3] * 5
    assert [r.restart_in_seconds for r in exits] == [0.05, 0.1, 0.2, 0.2, 0.2]
    starts = supervisor_events(caplog, "process_started", "crash")
    for exited, restarted in zip(exits, starts[1:]):  # each restart waited its pause out: no hot loop
        assert restarted.created - exited.created >= exited.restart_in_seconds - 0.005
    steady = supervisor_events(caplog, "process_started", "steady")
    assert len(steady) == 1 and not supervisor_events(caplog, "process_exited", "steady")
    assert supervisor_events(caplog, "process_stopped", "steady")[0].returncode == -signal.SIGTERM
    assert not psutil.pid_exists(steady[0].child_pid)


def test_stopping_kills_a_process_that_ignores_sigterm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="supervisor")
    ready = tmp_path / "ready"
    supervisor = Supervisor({"stubborn": f"sh -c \"trap '' TERM; touch {ready}; while :; do sleep 1; done\""},
                            cwd=tmp_path, stop_grace=0.2)
    thread, stop = run_in_thread(supervisor)
    wait_for(ready.exists, what="the process to ignore SIGTERM")
    pid = supervisor_events(caplog, "process_started", "stubborn")[0].child_pid
    stop.append(True)
    thread.join(timeout=60)
    assert supervisor_events(caplog, "process_killed", "stubborn")
    assert supervisor_events(caplog, "process_stopped", "stubborn")[0].returncode == -signal.SIGKILL
    assert not psutil.pid_exists(pid)


def _log_entries(path: Path) -> list[dict]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # make run's own announcements are plain text
    return entries


def _started(path: Path, child: str) -> list[int]:
    return [e["child_pid"] for e in _log_entries(path) if e.get("event") == "process_started" and e["child"] == child]


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or too busy starting to answer in time
        return False


@pytest.fixture
def make_run(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`make run` for real: migrations, then `python -m jobs.run_all` with its embedded Redis, SQLite and
    the web on free ports. Yields (process, log path, web port, redis port)."""
    web_port, redis_port = redis_server.free_port(), redis_server.free_port()
    env = {**os.environ, "INSTANCE_DIR": str(tmp_path / "instance"), "HOST": "127.0.0.1", "PORT": str(web_port),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'algo.sqlite3'}", "EMBEDDED_REDIS_PORT": str(redis_port),
           "LOG_LEVEL": "INFO"}
    env.pop("REDIS_URL", None)
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    log = tmp_path / "make-run.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.run_all"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    yield proc, log, web_port, redis_port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    # Whatever outlived a failed test: the Procfile's processes, and the embedded Redis.
    leftovers = {pid for e in _log_entries(log) if (pid := e.get("child_pid"))}
    redis_title = f"127.0.0.1:{redis_port}"  # redis-server's process title
    leftovers |= {p.pid for p in psutil.process_iter(["cmdline"]) if redis_title in " ".join(p.info["cmdline"] or [])}
    for pid in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                os.kill(pid, signal.SIGKILL)
    print("\n".join(log.read_text(errors="replace").splitlines()[-80:]))  # shown when the test failed


@pytest.mark.slow
def test_a_killed_listener_is_back_within_seconds_and_the_web_never_stops(make_run):  # type: ignore[no-untyped-def]
    proc, log, web_port, redis_port = make_run
    healthz = f"http://127.0.0.1:{web_port}/healthz"
    conn = redis.Redis(port=redis_port)
    wait_for(lambda: _answers(healthz), timeout=60, what="the web to answer")
    wait_for(lambda: conn.exists(keys.LISTENER_HEARTBEAT), timeout=60, what="the listener's heartbeat")
    first = {name: _started(log, name) for name in ("web", "worker", "exits", "scheduler", "listener", "notifier")}
    assert all(len(pids) == 1 for pids in first.values()), first
    listener, web = first["listener"][0], first["web"][0]

    os.kill(listener, signal.SIGKILL)
    restarted = wait_for(lambda: _started(log, "listener")[1:], timeout=15, what="a new listener")[0]
    assert restarted != listener
    exited = [e for e in _log_entries(log) if e.get("event") == "process_exited"]
    assert [(e["child"], e["child_pid"], e["returncode"], e["restart_in_seconds"]) for e in exited] == [
        ("listener", listener, -signal.SIGKILL, 1.0)]
    # The new listener runs our code (its own log line), and nothing else was touched.
    wait_for(lambda: any(e.get("process") == "listener" and e.get("pid") == restarted for e in _log_entries(log)),
             timeout=30, what="the new listener's first log line")
    assert {name: _started(log, name) for name in first if name != "listener"} == {
        name: pids for name, pids in first.items() if name != "listener"}
    assert psutil.Process(web).is_running() and _answers(healthz)

    proc.send_signal(signal.SIGTERM)  # what Ctrl-C on `make run` does
    assert proc.wait(timeout=60) == 0
    stopped = {e["child"]: (e["child_pid"], e["returncode"]) for e in _log_entries(log)
               if e.get("event") == "process_stopped"}
    assert stopped == {**{name: (pids[0], 0) for name, pids in first.items()}, "listener": (restarted, 0)}
    assert not any(psutil.pid_exists(pid) for pid, _ in stopped.values())
    with pytest.raises(redis.ConnectionError):
        conn.ping()  # and then Redis
