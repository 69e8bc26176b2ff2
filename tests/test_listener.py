"""The market listener with its real process (and the worker and scheduler), scripted ticks from a CSV
feed: stop-losses fire on the first breaching tick, exactly once, ahead of everything, across restarts."""
from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import wait_for
from tests.engine_helpers import (
    broker_orders, csv_feed, orders, run_event, send, started_strategy, status, trader, wait_status,
)
from webapp import keys
from webapp.engine.events import BUY, SELL, STOPLOSS

pytestmark = pytest.mark.slow


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def start_listener(processes, feed: str, name: str = "listener", **env: str) -> None:  # type: ignore[no-untyped-def]
    processes.env = {**processes.env, "FEED": feed, **env}
    processes.start(name, "jobs.listener")


def in_position(client, headers: dict, **changes: object) -> int:  # type: ignore[no-untyped-def]
    sid = started_strategy(client, headers, buy_in=1, sell_in=120, **changes)
    wait_status(client, headers, sid, "in_position")
    return sid


def test_first_breaching_tick_fires_one_stoploss_at_that_price(app, client, engine, redis_conn, tmp_path):
    headers = trader(client, "sl@example.com")
    sid = in_position(client, headers, stop_loss="1500")  # INFY fills at 1520.35
    start_listener(engine, csv_feed(tmp_path, "breach", [
        (0.5, "INFY", 1510.0), (1.0, "INFY", 1500.05), (1.5, "INFY", 1499.95), (1.7, "INFY", 1490.0),
        (2.0, "INFY", 1480.0)]))
    final = wait_status(client, headers, sid, "stopped_loss")
    assert final["position"] == 0 and final["status_reason"] == "stop-loss hit at 1499.95"
    log = orders(client, headers, sid)
    assert [(o["event"], o["side"], o["price"]) for o in log] == [("BUY", "BUY", "1520.35"),
                                                                  ("STOPLOSS", "SELL", "1499.95")]
    assert final["pnl"] == "-204.00"
    # Nothing holds INFY any more, so the listener lets it go; later breaching ticks fire nothing.
    wait_for(lambda: '"event": "feed_unsubscribe"' in engine.log("listener"), what="INFY unsubscribed")
    assert engine.log("listener").count("stop-loss breached") == 1
    send(app, run_event(SELL, sid))  # the scheduled SELL was cancelled; a stray one is dropped
    wait_for(lambda: "event dropped by the state machine" in engine.log("worker"), what="late SELL dropped")
    assert broker_orders(redis_conn, run_event(SELL, sid).event_id) == 0


def test_other_symbols_and_prices_above_the_stop_never_fire(client, engine, redis_conn, tmp_path):
    headers = trader(client, "other@example.com")
    infy = in_position(client, headers, stop_loss="1500", name="infy")
    tcs = in_position(client, headers, symbol="TCS", stop_loss="3000", name="tcs")  # fills at 3410
    start_listener(engine, csv_feed(tmp_path, "mixed", [
        (0.3, "TCS", 3100.0), (0.6, "INFY", 1500.05), (0.9, "TCS", 2999.95), (1.2, "INFY", 1501.0)]))
    wait_status(client, headers, tcs, "stopped_loss")
    wait_for(lambda: redis_conn.get(keys.last_price("NSE", "INFY")) == b"1501.0", what="the last INFY tick")
    assert status(client, headers, infy)["status"] == "in_position"
    assert status(client, headers, infy)["last_price"] == "1501.00"
    assert [o["event"] for o in orders(client, headers, infy)] == ["BUY"]


def test_start_and_stop_reach_the_listener_without_a_restart(client, engine, redis_conn, tmp_path):
    headers = trader(client, "subs@example.com")
    start_listener(engine, csv_feed(tmp_path, "quiet", []), LISTENER_RESYNC_SECONDS="3600")  # pub/sub only
    wait_for(lambda: redis_conn.exists(keys.LISTENER_HEARTBEAT), what="listener up")
    sid = started_strategy(client, headers, buy_in=60, sell_in=120, symbol="SBIN", stop_loss="700")
    wait_for(lambda: redis_conn.sismember(keys.LISTENER_SUBSCRIBED, "NSE:SBIN"), timeout=5, what="SBIN subscribed")
    client.post(f"/api/v1/strategy/{sid}/stop", headers=headers)
    wait_status(client, headers, sid, "stopped")
    wait_for(lambda: not redis_conn.sismember(keys.LISTENER_SUBSCRIBED, "NSE:SBIN"), timeout=5,
             what="SBIN unsubscribed")
    assert '"event": "feed_unsubscribe"' in engine.log("listener")


def test_a_killed_listener_restarts_and_a_later_breach_fires_once(client, engine, redis_conn, tmp_path):
    headers = trader(client, "restart@example.com")
    sid = in_position(client, headers, stop_loss="1500")
    start_listener(engine, csv_feed(tmp_path, "calm", [(0.2, "INFY", 1510.0)]))
    wait_for(lambda: redis_conn.get(keys.last_price("NSE", "INFY")) == b"1510.0", what="first tick recorded")
    engine.kill("listener", signal.SIGKILL)
    start_listener(engine, csv_feed(tmp_path, "storm", [(0.5, "INFY", 1495.0), (0.8, "INFY", 1490.0),
                                                       (1.0, "INFY", 1485.0)]), name="listener2")
    wait_status(client, headers, sid, "stopped_loss")
    wait_for(lambda: '"event": "feed_unsubscribe"' in engine.log("listener2"), what="INFY unsubscribed")
    assert engine.log("listener2").count("stop-loss breached") == 1
    assert [o["event"] for o in orders(client, headers, sid)] == ["BUY", "STOPLOSS"]


def test_a_stale_feed_is_detected_and_reported(client, engine, redis_conn, tmp_path):
    headers = trader(client, "stale@example.com")
    in_position(client, headers)
    start_listener(engine, csv_feed(tmp_path, "silent", [(0.1, "INFY", 1515.0)]), FEED_STALE_SECONDS="1")
    wait_for(lambda: redis_conn.hexists(keys.FEED_STALE, "NSE:INFY"), timeout=10, what="feed marked stale")
    heartbeat = json.loads(redis_conn.get(keys.LISTENER_HEARTBEAT))
    assert heartbeat["stale"] == ["NSE:INFY"] and heartbeat["in_position"] == 1
    assert '"event": "feed_stale"' in engine.log("listener")


def test_a_symbol_the_feed_cannot_subscribe_fails_its_strategy(client, engine, tmp_path):
    headers = trader(client, "unknown@example.com")
    sid = started_strategy(client, headers, buy_in=60, sell_in=120)
    smaller = tmp_path / "instruments.csv"
    smaller.write_text("instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,"
                       "lot_size,instrument_type,segment,exchange\n779521,3045,SBIN,SBI,812.40,,0,0.05,1,EQ,NSE,NSE\n")
    start_listener(engine, csv_feed(tmp_path, "none", []), PAPER_INSTRUMENTS_FILE=str(smaller))
    failed = wait_status(client, headers, sid, "failed")
    assert failed["status_reason"].startswith("symbol unavailable") and failed["needs_attention"] is False
    assert orders(client, headers, sid) == []


def test_a_stoploss_queued_behind_orders_runs_first(app, client, engine, redis_conn):
    headers = trader(client, "prio@example.com")
    held = in_position(client, headers, name="held")
    waiting = [started_strategy(client, headers, buy_in=600, sell_in=900, name=f"w{i}") for i in range(5)]
    engine.kill("worker", signal.SIGTERM)  # nothing consumes while the queues fill
    for sid in waiting:
        send(app, run_event(BUY, sid))
    send(app, run_event(STOPLOSS, held))
    engine.start("worker", "jobs.worker")
    wait_status(client, headers, held, "stopped_loss")
    for sid in waiting:
        wait_status(client, headers, sid, "in_position")
    exit_id = orders(client, headers, held)[-1]["id"]
    assert all(orders(client, headers, sid)[0]["id"] > exit_id for sid in waiting)
