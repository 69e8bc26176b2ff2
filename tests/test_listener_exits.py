"""Exits at tick speed (issue 13, part 2) through the real worker, scheduler and listener processes, the
paper broker and scripted ticks: a percent and a points stop resolved against the real entry fill, a
trailing stop that moves three times and then fires at its moved level exactly once, a short (SELL first,
its stop above fires a BUY), and a target hit.

Each strategy is put in position first (the paper exchange fills INFY at its catalogue price, nothing has
ticked yet), then the listener starts on a CSV feed that plays the ticks."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest

from tests.conftest import wait_for
from tests.engine_helpers import (
    broker_orders, csv_feed, log_entries, orders, run_event, seconds_ahead, start, status, trader, wait_status,
)
from tests.helpers import api_strategy, db_row
from webapp import keys
from webapp.engine.events import STOPLOSS, TARGET
from webapp.models import Strategy

pytestmark = pytest.mark.slow

PAISE = Decimal("0.01")


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def strategy(app, client, headers: dict, name: str, **terms: object) -> int:  # type: ignore[no-untyped-def]
    """Created through the JSON API with its exit terms and STARTed (BUY in a second, SELL in five minutes)."""
    sid = api_strategy(client, headers, name=name, buy_time=seconds_ahead(1), sell_time=seconds_ahead(300),
                       **{k: str(v) for k, v in terms.items() if v is not None})
    start(client, headers, sid)
    return sid


def paise(value: Decimal) -> Decimal:
    return value.quantize(PAISE, rounding=ROUND_HALF_UP)


def fill(client, headers: dict, sid: int) -> Decimal:  # type: ignore[no-untyped-def]
    entries = [o for o in orders(client, headers, sid) if o["event"] == "BUY"]
    assert len(entries) == 1 and entries[0]["status"] == "COMPLETE"
    return Decimal(entries[0]["price"])


def listen(processes, tmp_path, rows: list[tuple[float, float]]) -> None:  # type: ignore[no-untyped-def]
    # Moved stops written at every 100 ms flush: the chart's series then has each move of ticks 0.3 s apart.
    processes.env = {**processes.env, "FEED": csv_feed(tmp_path, "ticks", [(o, "INFY", p) for o, p in rows]), "TRAIL_FLUSH_SECONDS": "0.1"}
    processes.start("listener", "jobs.listener")



def test_a_percent_and_a_points_stop_are_resolved_from_the_real_fill(app, client, engine, tmp_path):
    headers = trader(client, "resolved@example.com")
    pct = strategy(app, client, headers, "pct", stop_loss_type="percent", stop_loss="1")
    pts = strategy(app, client, headers, "pts", stop_loss_type="points", stop_loss="20")
    for sid in (pct, pts):
        wait_status(client, headers, sid, "in_position")
    pct_stop = paise(fill(client, headers, pct) * (1 - Decimal(1) / 100))
    pts_stop = fill(client, headers, pts) - 20
    assert status(client, headers, pct)["stop_price"] == str(pct_stop)
    assert status(client, headers, pts)["stop_price"] == str(pts_stop)
    assert db_row(app, Strategy, pct)["stop_price"] == pct_stop and db_row(app, Strategy, pts)["stop_price"] == pts_stop

    below_pct = float(pct_stop) - 0.05
    listen(engine, tmp_path, [(0.3, float(pct_stop) + 0.05), (0.6, below_pct), (0.9, float(pts_stop) + 0.05),
                              (1.2, float(pts_stop))])
    assert wait_status(client, headers, pct, "stopped_loss")["status_reason"] == f"stop-loss hit at {below_pct:.2f}"
    assert wait_status(client, headers, pts, "stopped_loss")["status_reason"] == f"stop-loss hit at {pts_stop}"
    for sid in (pct, pts):
        assert [(o["event"], o["side"]) for o in orders(client, headers, sid)] == [("BUY", "BUY"), ("STOPLOSS", "SELL")]


def test_a_trailing_stop_moves_three_times_then_fires_once_at_its_moved_level(app, client, engine, redis_conn,
                                                                                tmp_path):
    headers = trader(client, "trail@example.com")
    # A 20-point stop; every 10 points in favour it moves up 5.
    sid = strategy(app, client, headers, "trail", stop_loss_type="points", stop_loss="20", trail_unit="points",
                   trail_every="10", trail_by="5")
    wait_status(client, headers, sid, "in_position")
    entry = float(fill(client, headers, sid))
    initial = entry - 20
    listen(engine, tmp_path, [(0.3, entry + 5), (0.6, entry + 10.5), (0.9, entry + 20.2), (1.2, entry + 25),
                              (1.5, entry + 31), (1.8, entry + 16), (2.1, initial + 15.05), (2.4, initial + 14.9),
                              (2.7, initial + 10), (3.0, initial)])
    final = wait_status(client, headers, sid, "stopped_loss")
    assert final["status_reason"] == f"stop-loss hit at {initial + 14.9:.2f}"
    assert [(o["event"], o["side"]) for o in orders(client, headers, sid)] == [("BUY", "BUY"), ("STOPLOSS", "SELL")]
    assert broker_orders(redis_conn, run_event(STOPLOSS, sid).event_id) == 1
    breached = [e for e in log_entries(engine, "listener") if e.get("msg") == "stop-loss breached"]
    assert len(breached) == 1 and breached[0]["stop"] == round(initial + 15, 2)
    # Each move (one a flush) is in the run's series for the chart, which draws the stop as it moved.
    moves = [float(p.split(b":")[1]) for p in redis_conn.lrange(keys.stop_moves(sid, run_event(STOPLOSS, sid).run_id),
                                                               0, -1)]
    assert moves == [round(initial + 5, 2), round(initial + 10, 2), round(initial + 15, 2)]
    chart = client.get(f"/api/v1/strategy/{sid}/chart", headers=headers).json
    assert [price for _, price in chart["stop"]] == [round(initial, 2)] + moves
    assert chart["direction"] == "long" and chart["stop_loss"] == round(initial + 15, 2)


def test_a_short_sells_first_and_its_stop_above_buys_back(app, client, engine, tmp_path):
    headers = trader(client, "short@example.com")
    sid = strategy(app, client, headers, "short", direction="short", product="MIS", stop_loss_type="points",
                   stop_loss="10")
    wait_status(client, headers, sid, "in_position")
    entry = orders(client, headers, sid)[0]
    assert (entry["event"], entry["side"]) == ("BUY", "SELL")  # the entry trigger places a SELL
    stop = Decimal(entry["price"]) + 10
    assert status(client, headers, sid)["stop_price"] == str(stop)
    listen(engine, tmp_path, [(0.3, float(stop) - 5), (0.6, float(stop) - 0.05), (0.9, float(stop) + 0.5)])
    final = wait_status(client, headers, sid, "stopped_loss")
    assert final["status_reason"] == f"stop-loss hit at {float(stop) + 0.5:.2f}" and final["position"] == 0
    assert [(o["event"], o["side"]) for o in orders(client, headers, sid)] == [("BUY", "SELL"), ("STOPLOSS", "BUY")]
    chart = client.get(f"/api/v1/strategy/{sid}/chart", headers=headers).json
    assert chart["direction"] == "short" and [price for _, price in chart["stop"]] == [float(stop)]


def test_a_target_reached_ends_the_run_as_target_hit_with_one_exit(app, client, engine, redis_conn, tmp_path):
    headers = trader(client, "target@example.com")
    sid = strategy(app, client, headers, "target", stop_loss_type="points", stop_loss="20", target_type="points",
                   target="10")
    wait_status(client, headers, sid, "in_position")
    target = fill(client, headers, sid) + 10
    assert status(client, headers, sid)["target_price"] == str(target)
    listen(engine, tmp_path, [(0.3, float(target) - 0.05), (0.6, float(target)), (0.9, float(target) + 3),
                              (1.2, float(target) - 40)])  # past the stop too, later: still one exit
    final = wait_status(client, headers, sid, "target_hit")
    assert final["status_reason"] == f"target hit at {target}" and final["position"] == 0
    wait_for(lambda: '"event": "feed_unsubscribe"' in engine.log("listener"), what="INFY let go by the listener")
    assert [(o["event"], o["side"]) for o in orders(client, headers, sid)] == [("BUY", "BUY"), ("TARGET", "SELL")]
    assert broker_orders(redis_conn, run_event(TARGET, sid).event_id) == 1
    assert [e["msg"] for e in log_entries(engine, "listener") if e.get("strategy_id") == sid] == ["target hit"]
    assert client.get(f"/api/v1/strategy/{sid}/chart", headers=headers).json["target"] == float(target)


def test_a_points_stop_larger_than_the_fill_is_told_not_silently_unwatchable(app, client, engine):
    """Made when no price was known (Kite mode before the first tick), so the form could not refuse it: the
    entry fills and the trader is told that no price can reach the stop."""
    from tests.helpers import db_update

    headers = trader(client, "deep@example.com")
    sid = api_strategy(client, headers, buy_time=seconds_ahead(1), sell_time=seconds_ahead(300))
    db_update(app, Strategy, sid, stop_loss_type="points", stop_loss=Decimal("5000"))
    start(client, headers, sid)
    held = wait_status(client, headers, sid, "in_position")
    assert held["stop_price"] == str(paise(fill(client, headers, sid) - 5000))
    assert "no price can reach it" in held["status_reason"]
