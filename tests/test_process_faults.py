"""Processes stopped and doubled for real: SIGTERM lets a worker finish the order in hand and the scheduler
and listener stop cleanly; two workers and two listeners at once still place one exit per strategy."""
from __future__ import annotations

import signal

import pytest

from tests.conftest import wait_for
from tests.engine_helpers import broker_orders, inject_faults, orders, started_strategy, run_event, trader, wait_status
from webapp import keys
from webapp.engine.events import BUY, STOPLOSS

pytestmark = pytest.mark.slow


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def quiet_feed(tmp_path) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "quiet.csv"
    path.write_text("offset_seconds,symbol,price\n")
    return f"csv:{path}"


def test_sigterm_lets_the_worker_finish_the_order_in_hand_and_everything_stops_cleanly(client, processes,
                                                                                       redis_conn, tmp_path):
    processes.env = {**processes.env, "FEED": quiet_feed(tmp_path)}
    for name in ("worker", "scheduler", "listener"):
        processes.start(name, f"jobs.{name}")
    headers = trader(client, "term@example.com")
    inject_faults(redis_conn, "slow_after_accept")  # the broker's answer takes 5 s: SIGTERM lands mid-order
    sid = started_strategy(client, headers, buy_in=1, sell_in=120)
    wait_for(lambda: redis_conn.exists(keys.LISTENER_HEARTBEAT, keys.SCHEDULER_HEARTBEAT) == 2, what="all up")
    event_id = run_event(BUY, sid).event_id
    wait_for(lambda: broker_orders(redis_conn, event_id) == 1, timeout=10, what="the broker to accept the BUY")
    exits = {}
    for name in ("worker", "scheduler", "listener"):
        proc = processes.running.pop(name)
        proc.send_signal(signal.SIGTERM)
        exits[name] = proc
    codes = {name: proc.wait(timeout=30) for name, proc in exits.items()}
    assert codes == {"worker": 0, "scheduler": 0, "listener": 0}
    # The order in hand was finished and recorded by the worker itself, not recovered later.
    held = wait_status(client, headers, sid, "in_position", timeout=1)
    assert held["position"] == 10
    assert [(o["event"], o["status"], o["error"]) for o in orders(client, headers, sid)] == [("BUY", "COMPLETE", None)]
    assert "scheduler stopped" in processes.log("scheduler") and "listener stopped" in processes.log("listener")


def test_two_workers_and_two_listeners_place_one_exit_per_breached_strategy(client, processes, redis_conn,
                                                                             tmp_path):
    script = tmp_path / "breach.csv"
    script.write_text("offset_seconds,symbol,price\n" + "".join(
        f"{t},{symbol},{price}\n" for t in (4.0, 4.3, 4.6) for symbol, price in (("INFY", 1400.0), ("TCS", 4000.0))))
    processes.env = {**processes.env, "FEED": f"csv:{script}"}
    for name in ("worker", "worker2", "scheduler"):
        processes.start(name, "jobs.worker" if name.startswith("worker") else "jobs.scheduler")
    headers = trader(client, "doubles@example.com")
    breached = [started_strategy(client, headers, buy_in=1, sell_in=120, name=f"infy{n}", stop_loss="1450")
                for n in range(4)]
    safe = started_strategy(client, headers, buy_in=1, sell_in=120, name="tcs", symbol="TCS", stop_loss="1000")
    for sid in breached + [safe]:
        wait_status(client, headers, sid, "in_position")
    for name in ("worker", "worker2"):  # no exit until both listeners have fired: every breach is sent twice
        processes.kill(name, signal.SIGTERM)
    processes.start("listener", "jobs.listener")
    processes.start("listener2", "jobs.listener")
    wait_for(lambda: (processes.log("listener") + processes.log("listener2")).count("stop-loss breached") == 8,
             timeout=30, what="both listeners to fire all four")
    for name in ("worker3", "worker4"):  # two workers take the doubled STOPLOSS events at once
        processes.start(name, "jobs.worker")
    for sid in breached:
        wait_status(client, headers, sid, "stopped_loss", timeout=30)
        assert [o["event"] for o in orders(client, headers, sid)] == ["BUY", STOPLOSS]
        assert broker_orders(redis_conn, run_event(STOPLOSS, sid).event_id) == 1
    assert wait_status(client, headers, safe, "in_position", timeout=1)["position"] == 10
    assert [o["event"] for o in orders(client, headers, safe)] == ["BUY"]
