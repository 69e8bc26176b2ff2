"""Prometheus metrics (webapp/metrics.py): /metrics adds up what every process wrote to the shared
multiprocess directory. The worker, scheduler and listener here are real processes writing to this test's
own directory (their PROMETHEUS_MULTIPROC_DIR, the app's METRICS_DIR); the test process writes elsewhere,
so every value asserted below came from another process."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from tests.engine_helpers import csv_feed, log_entries, started_strategy, trader, wait_status
from webapp import keys, metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def app_overrides(metrics_dir: Path) -> dict:
    return {"TRADING_CALENDAR": "always", "METRICS_DIR": str(metrics_dir)}


@pytest.fixture
def engine(processes, metrics_dir: Path):  # type: ignore[no-untyped-def]
    """The conftest's worker and scheduler, writing their metrics to this test's directory."""
    processes.env = {**processes.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    return processes


def scrape(client, **headers: str) -> dict[tuple[str, frozenset], float]:  # type: ignore[no-untyped-def]
    """/metrics as {(sample name, its labels): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.data.decode()) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.mark.slow
def test_metrics_after_a_buy_show_the_workers_order_latency_and_outcome(app, client, engine, metrics_dir, redis_conn):
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") != str(metrics_dir)  # the test process writes elsewhere
    headers = trader(client, "metrics@example.com")
    sid = started_strategy(client, headers, buy_in=1, sell_in=120)
    wait_status(client, headers, sid, "in_position")

    samples = wait_for(lambda: (s := scrape(client)) and value(
        s, "algo_orders_total", event="BUY", outcome="complete") and s, what="the BUY counted")
    assert value(samples, "algo_orders_total", event="BUY", outcome="complete") == 1.0
    placed = value(samples, "algo_order_phase_seconds_count", phase="trigger_to_placed", event="BUY")
    assert placed is not None and placed >= 1
    assert value(samples, "algo_order_phase_seconds_bucket", phase="trigger_to_placed", event="BUY", le="+Inf") == placed
    # Placed after the worker accepted the event, so at least as late as the lateness it logged then (seconds
    # on a quiet machine, more when the processes were slow to start).
    accepted = [line for line in log_entries(engine, "worker") if line.get("msg") == "event accepted"]
    to_placed = value(samples, "algo_order_phase_seconds_sum", phase="trigger_to_placed", event="BUY")
    assert accepted[0]["lateness_ms"] / 1000 <= to_placed < 60
    assert value(samples, "algo_order_phase_seconds_count", phase="placed_to_final", event="BUY") >= 1
    # The paper exchange fills a MARKET order PAPER_FILL_MS (200 ms) after accepting it.
    assert value(samples, "algo_order_phase_seconds_sum", phase="placed_to_final", event="BUY") >= 0.1
    # Written by the worker process: its own files, under its pid.
    worker_pid = engine.running["worker"].pid
    assert (metrics_dir / f"histogram_{worker_pid}.db").exists()
    assert (metrics_dir / f"counter_{worker_pid}.db").exists()
    assert not list(metrics_dir.glob(f"*_{os.getpid()}.db"))
    # State read at scrape time.
    assert value(samples, "algo_queue_depth", queue="orders") == 0.0
    assert value(samples, "algo_queue_depth", queue="stoploss") == 0.0
    assert value(samples, "algo_notifications_pending") is not None
    redis_conn.hset(keys.FEED_STALE, mapping={"NSE:INFY": "x", "NSE:TCS": "y"})
    assert value(scrape(client), "algo_stale_instruments") == 2.0


@pytest.mark.slow
def test_listener_ticks_are_counted(app, client, engine, metrics_dir, tmp_path):
    headers = trader(client, "ticks@example.com")
    sid = started_strategy(client, headers, buy_in=1, sell_in=120, stop_loss="1400")
    wait_status(client, headers, sid, "in_position")  # INFY held: the listener subscribes to it
    engine.env = {**engine.env, "FEED": csv_feed(tmp_path, "ticks", [
        (0.2, "INFY", 1510.0), (0.4, "INFY", 1511.0), (0.6, "INFY", 1512.0), (0.8, "INFY", 1513.0)])}
    listener = engine.start("listener", "jobs.listener")
    wait_for(lambda: (value(scrape(client), "algo_ticks_total") or 0) >= 4, what="4 ticks counted")
    assert (metrics_dir / f"counter_{listener.pid}.db").exists()


def test_a_metrics_token_is_asked_for_when_set(app, client):
    app.config["METRICS_TOKEN"] = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "algo_notifications_pending" in scrape(client, Authorization="Bearer s3cret").__repr__()


def test_order_outcomes():
    assert metrics.order_outcome("COMPLETE", 10, 10) == metrics.COMPLETE
    assert metrics.order_outcome("CANCELLED", 4, 10) == metrics.PARTIAL
    assert metrics.order_outcome("REJECTED", 0, 10) == metrics.REJECTED
    assert metrics.order_outcome("CANCELLED", 0, 10) == metrics.CANCELLED
    assert metrics.order_outcome("OPEN", 0, 10) == metrics.UNKNOWN


HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def test_the_grafana_dashboard_uses_only_defined_metrics():
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 7
    histograms = {"algo_order_phase_seconds", "algo_rate_limit_wait_seconds"}
    used = set()
    for expr in exprs:
        for name in re.findall(r"\balgo_[a-z_]+", expr):
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            assert name in metrics.NAMES or base in histograms, (name, expr)
            used.add(base if base in histograms else name)
    assert used == metrics.NAMES  # every metric has a panel
    assert all("${DS_PROMETHEUS}" in json.dumps(panel["datasource"]) for panel in dashboard["panels"]
               if panel.get("targets"))
