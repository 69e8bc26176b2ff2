"""How the listener keeps its view of running strategies without rereading all of them: "runtime changed"
messages are numbered, and a lost message (a gap, or a counter that moved with nothing arriving) or a
Redis wipe (the counter went back) makes it rebuild. Real Redis, the listener object in this process."""
from __future__ import annotations

from decimal import Decimal

import pytest

from jobs.listener import Listener
from webapp import clock
from webapp.engine import runtime
from webapp.feeds.simulated import ScriptedFeed
from webapp.market_calendar import exchange_date
from webapp.models import Strategy


@pytest.fixture
def listener(app, redis_conn, tmp_path):  # type: ignore[no-untyped-def]
    quiet = tmp_path / "quiet.csv"
    quiet.write_text("offset_seconds,symbol,price\n")
    with app.app_context():
        watcher = Listener(app, redis_conn, ScriptedFeed(quiet))
        watcher.resync()
        yield watcher


def held(strategy_id: int, stop: str = "1400") -> Strategy:
    return Strategy(id=strategy_id, user_id=1, symbol="INFY", exchange="NSE", instrument_token=408065, quantity=1,
                    buy_time="09:20:00", sell_time="15:00:00", stop_loss=Decimal(stop), status="in_position",
                    position=1, last_action="BUY", entry_price=Decimal("1500"),
                    run_date=exchange_date(clock.now()).isoformat(), run_id=strategy_id)


def test_a_message_that_never_arrived_is_noticed_by_the_counter_and_healed(listener, redis_conn):
    runtime.activate(redis_conn, held(7))  # published, but this listener was not subscribed: lost
    listener.check_sequence()  # sees the counter move
    assert 7 not in listener.members
    listener.check_sequence()  # a second later nothing arrived for it: rebuild
    assert 7 in listener.members
    assert listener.index.pop_breached("NSE:INFY", 1399.0) == [(1400.0, 7)]


def test_a_gap_in_the_numbers_rebuilds_at_once(listener, redis_conn):
    runtime.activate(redis_conn, held(7))
    runtime.activate(redis_conn, held(8, stop="1300"))
    listener.on_message({"seq": listener.seq + 2, "strategy_id": 8, "symbol": "INFY", "status": "in_position"})
    assert set(listener.members) == {7, 8}


def test_messages_in_sequence_apply_one_by_one_and_old_ones_are_ignored(listener, redis_conn):
    runtime.activate(redis_conn, held(7))
    seq = listener.seq + 1
    listener.on_message({"seq": seq, "strategy_id": 7, "symbol": "INFY", "status": "in_position"})
    assert listener.seq == seq and 7 in listener.members
    listener.on_message({"seq": seq, "strategy_id": 7, "symbol": "INFY", "status": "stopped"})
    assert 7 in listener.members  # a replay of a number already applied changes nothing


def test_a_redis_wipe_sends_the_counter_back_and_the_view_is_rebuilt(listener, redis_conn):
    runtime.activate(redis_conn, held(7))
    listener.resync()
    assert 7 in listener.members
    redis_conn.flushdb()
    listener.check_sequence()
    assert listener.members == {} and len(listener.index) == 0
