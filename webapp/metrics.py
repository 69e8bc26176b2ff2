"""Every Prometheus metric, in one place: names, help, labels and buckets. Imported where things are measured
(the worker's orders, the listener's ticks, the rate limiter, the notifier) and by /metrics (webapp/main).

prometheus_client runs in multiprocess mode: each process (web, workers, scheduler, listener, notifier)
writes its values to files in one directory, and a scrape of /metrics (in any web process) adds them up.
The library picks its mode when it is first imported, from PROMETHEUS_MULTIPROC_DIR, so this module sets
that variable (from the METRICS_DIR setting's rule, webapp/config.metrics_dir) before importing it, when the
process was not given one. jobs/run_all.py empties the directory when the whole system starts; a process
restarted alone keeps adding to the totals (its files are named after its pid).

Values that are a state of the system rather than a count a process keeps (queue depths, stale instruments,
deliveries pending) are read at scrape time, in the web process, by StateCollector."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from webapp.config import ROOT, metrics_dir

os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(metrics_dir(Path(os.environ.get("INSTANCE_DIR", ROOT / "instance"))))
)
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

log = logging.getLogger("metrics")

# Phases of an order's latency. trigger_to_placed: from the event's instant (a BUY/SELL's scheduled second,
# a stop-loss's crossing tick) to the broker accepting the placement; placed_to_final: from then to the
# order's final state (COMPLETE, REJECTED, CANCELLED) being known.
TRIGGER_TO_PLACED = "trigger_to_placed"
PLACED_TO_FINAL = "placed_to_final"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)

ORDER_PHASE_SECONDS = Histogram(
    "algo_order_phase_seconds",
    "Order latency by phase: trigger_to_placed (event instant to the broker accepting the order), "
    "placed_to_final (accepted to its final state known)",
    ["phase", "event"],
    buckets=LATENCY_BUCKETS,
)

# Outcomes of an event's order (algo_orders_total's outcome label).
COMPLETE, PARTIAL, REJECTED, CANCELLED, FAILED, UNKNOWN = "complete", "partial", "rejected", "cancelled", "failed", "unknown"
ORDERS = Counter(
    "algo_orders",
    "Orders by event and outcome: complete, partial (filled in part), rejected, cancelled (nothing filled), "
    "failed (not placed, or not placed in time), unknown (final state not confirmed)",
    ["event", "outcome"],
)

TICKS = Counter("algo_ticks", "Ticks received by the market listener (rate() is ticks a second)")

RATE_LIMIT_WAIT_SECONDS = Histogram(
    "algo_rate_limit_wait_seconds",
    "Time a broker call waited for its turn under the shared per-API-key rate limits, by kind of call",
    ["kind"],
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

NOTIFICATIONS = Counter(
    "algo_notifications",
    "Notification deliveries by channel and outcome: sent, retry (failed, will be tried again), failed (given up)",
    ["channel", "outcome"],
)

# Read at scrape time (StateCollector).
QUEUE_DEPTH = "algo_queue_depth"
STALE_INSTRUMENTS = "algo_stale_instruments"
NOTIFICATIONS_PENDING = "algo_notifications_pending"

# Every metric name a dashboard may use (docs/grafana-dashboard.json is tested against it).
NAMES = frozenset({
    "algo_order_phase_seconds", "algo_orders_total", "algo_ticks_total", "algo_rate_limit_wait_seconds",
    "algo_notifications_total", QUEUE_DEPTH, STALE_INSTRUMENTS, NOTIFICATIONS_PENDING,
})


_broken = False  # a write has failed in this process (told once)


def _lost(exc: Exception) -> None:
    global _broken
    if not _broken:
        _broken = True
        log.error("metrics not written: values are lost until this is fixed",
                  extra={"event": "metrics_write_failed", "error": repr(exc)})


def inc(metric: Counter, *labels: str, amount: float = 1.0) -> None:
    """A count that never fails what it counts (an order above all): prometheus_client opens and grows a
    file on first use of a label set, which a full disk or a missing directory makes raise."""
    try:
        (metric.labels(*labels) if labels else metric).inc(amount)
    except Exception as exc:  # noqa: BLE001
        _lost(exc)


def observe(metric: Histogram, value: float, *labels: str) -> None:
    """As inc(), for a histogram."""
    try:
        (metric.labels(*labels) if labels else metric).observe(value)
    except Exception as exc:  # noqa: BLE001
        _lost(exc)


def order_outcome(status: str, filled: int, asked: int) -> str:
    """algo_orders_total's outcome for a broker's final answer."""
    if filled > 0:
        return COMPLETE if status == "COMPLETE" and filled >= asked else PARTIAL
    return {"REJECTED": REJECTED, "CANCELLED": CANCELLED}.get(status, UNKNOWN)


class StateCollector(Collector):
    """Gauges read when scraped (in the web process, in a request): RQ queue depths, instruments with no
    recent ticks, notification deliveries pending. A source that does not answer is left out of the scrape."""

    def collect(self):  # type: ignore[no-untyped-def]
        from sqlalchemy import func, select

        from webapp import keys, redis_client
        from webapp.engine.events import QUEUES
        from webapp.extensions import db
        from webapp.models import NotificationDelivery

        try:
            conn = redis_client.current()
            pipe = conn.pipeline(transaction=False)
            for name in QUEUES:
                pipe.llen(_queue_key(name))
            pipe.hlen(keys.FEED_STALE)
            *depths, stale = pipe.execute()
            queues = GaugeMetricFamily(QUEUE_DEPTH, "Jobs waiting on the engine's RQ queues", labels=["queue"])
            for name, depth in zip(QUEUES, depths):
                queues.add_metric([name], depth)
            yield queues
            yield GaugeMetricFamily(STALE_INSTRUMENTS, "Instruments with no tick for FEED_STALE_SECONDS", value=stale)
        except Exception as exc:  # noqa: BLE001 — the rest of the scrape still answers
            log.warning("metrics: redis not read", extra={"event": "metrics_redis_failed", "error": str(exc)})
        try:
            pending = db.session.scalar(
                select(func.count()).select_from(NotificationDelivery).where(NotificationDelivery.status == "pending")
            )
            yield GaugeMetricFamily(NOTIFICATIONS_PENDING, "Notification deliveries not sent yet", value=pending or 0)
        except Exception as exc:  # noqa: BLE001
            db.session.rollback()
            log.warning("metrics: database not read", extra={"event": "metrics_db_failed", "error": str(exc)})


def _queue_key(name: str) -> str:
    from rq import Queue

    return Queue.redis_queue_namespace_prefix + name


def exposition(path: str) -> tuple[bytes, str]:
    """The text a scrape gets: every process's values from the directory, and the state read now."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    registry.register(StateCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
