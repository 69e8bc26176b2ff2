"""How the listener keeps its view of running strategies without rereading all of them: "runtime changed"
messages are numbered, and a lost message (a gap, or a counter that moved with nothing arriving) or a
Redis wipe (the counter went back) makes it rebuild; a fired stop is kept, and fired again while the price
stays breached, until the strategy leaves its position. Real Redis, the listener object in this process."""
from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
from rq import Queue

from jobs.listener import Listener
from webapp import clock, keys
from webapp.engine import exits, runtime
from webapp.engine.exit_index import STOP
from webapp.feeds import Instrument, Tick
from webapp.feeds.simulated import ScriptedFeed
from webapp.market_calendar import exchange_date
from webapp.models import Strategy


@pytest.fixture
def app_overrides() -> dict:
    return {"TRAIL_FLUSH_SECONDS": 0}  # every flush writes the moved stops these tests look for


@pytest.fixture
def listener(app, redis_conn, tmp_path):  # type: ignore[no-untyped-def]
    quiet = tmp_path / "quiet.csv"
    quiet.write_text("offset_seconds,symbol,price\n")
    with app.app_context():
        watcher = Listener(app, redis_conn, ScriptedFeed(quiet))
        watcher.resync()
        yield watcher


def held(strategy_id: int, stop: str = "1400", **terms: object) -> Strategy:
    """In position at 1500, its levels resolved as the engine does at the entry fill."""
    strategy = Strategy(id=strategy_id, user_id=1, symbol="INFY", exchange="NSE", instrument_token=408065,
                        quantity=1, buy_time="09:20:00", sell_time="15:00:00", stop_loss=Decimal(stop),
                        status="in_position", position=1, last_action="BUY", entry_price=Decimal("1500"),
                        run_date=exchange_date(clock.now()).isoformat(), run_id=strategy_id,
                        **{"direction": "long", "stop_loss_type": "price", "target_type": None, "target": None,
                           "trail_unit": None, "trail_every": None, "trail_by": None, "breakeven_at": None, **terms})
    levels = exits.resolve(strategy, strategy.entry_price)
    strategy.stop_price, strategy.target_price = levels.stop, levels.target
    return strategy


def test_a_message_that_never_arrived_is_noticed_by_the_counter_and_healed(listener, redis_conn):
    runtime.activate(redis_conn, held(7))  # published, but this listener was not subscribed: lost
    listener.check_sequence()  # sees the counter move
    assert 7 not in listener.members
    listener.check_sequence()  # a second later nothing arrived for it: rebuild
    assert 7 in listener.members
    assert listener.index.pop_crossed("NSE:INFY", 1399.0) == [(7, STOP, 1400.0)]


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


INFY = Instrument("NSE", "INFY", 408065)


def queued_stoplosses(redis_conn) -> list[str]:  # type: ignore[no-untyped-def]
    return [event["event_id"] for job in Queue("stoploss", connection=redis_conn).get_jobs() for event in job.args[0]]


def test_a_fired_stop_fires_again_with_its_id_only_while_breached_and_a_resync_keeps_it(listener, redis_conn):
    runtime.activate(redis_conn, held(7))  # stop 1400
    listener.resync()
    listener.on_ticks([Tick(INFY, 1399.0)])
    assert queued_stoplosses(redis_conn) == ["7:STOPLOSS:7"]
    listener.resync()  # still in position: the fired stop is kept, not indexed for every tick to fire again
    listener.on_ticks([Tick(INFY, 1390.0)])
    listener.refire_due()  # its pause is not over
    assert queued_stoplosses(redis_conn) == ["7:STOPLOSS:7"]

    listener.fired["7:STOPLOSS:7"].due = 0.0  # the pause is over...
    listener.on_ticks([Tick(INFY, 1450.0)])  # ...but the price is back above the stop: nothing
    listener.refire_due()
    assert queued_stoplosses(redis_conn) == ["7:STOPLOSS:7"]
    listener.on_ticks([Tick(INFY, 1395.0)])
    listener.refire_due()
    assert queued_stoplosses(redis_conn) == ["7:STOPLOSS:7"] * 2
    assert listener.fired["7:STOPLOSS:7"].attempt == 2
    assert [listener._refire_pause(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]

    listener.on_message({"seq": listener.seq + 1, "strategy_id": 7, "symbol": "INFY", "status": "stopped_loss"})
    assert listener.fired == {} and len(listener.index) == 0  # the exit is recorded: nothing left to fire


def test_a_stop_indexed_at_or_above_the_last_price_fires_without_waiting_for_a_tick(listener, redis_conn):
    runtime.activate(redis_conn, held(7))  # stop 1400: it keeps INFY subscribed
    listener.resync()
    listener.on_ticks([Tick(INFY, 1420.0)])
    runtime.activate(redis_conn, held(8, stop="1425"))  # e.g. rebuilt by recovery after a wipe, INFY quiet since
    listener.on_message({"seq": listener.seq + 1, "strategy_id": 8, "symbol": "INFY", "status": "in_position"})
    assert queued_stoplosses(redis_conn) == ["8:STOPLOSS:8"]


def test_quotes_check_stops_but_do_not_make_a_stale_instrument_fresh(listener, redis_conn):
    runtime.activate(redis_conn, held(7))
    listener.resync()
    listener.stale["NSE:INFY"] = "2026-11-25T04:00:00+00:00"
    listener.on_quotes([Tick(INFY, 1410.0)])
    listener.flush_prices()
    assert "NSE:INFY" in listener.stale and redis_conn.get(keys.last_price("NSE", "INFY")) == b"1410.0"
    listener.on_quotes([Tick(INFY, 1400.0)])
    assert queued_stoplosses(redis_conn) == ["7:STOPLOSS:7"]
    listener.on_ticks([Tick(INFY, 1401.0)])
    listener.flush_prices()
    assert "NSE:INFY" not in listener.stale


def queued(redis_conn, queue: str = "stoploss") -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(event["event_id"], event["price"]) for job in Queue(queue, connection=redis_conn).get_jobs()
            for event in job.args[0]]


def test_a_fired_target_refires_only_at_or_beyond_it_and_leaves_the_stop_watched(listener, redis_conn):
    """A TARGET whose job is lost must not leave a position that turns unguarded: the stop stays indexed.
    One exit a run is the engine's to keep (after target_hit the state machine drops a STOPLOSS)."""
    runtime.activate(redis_conn, held(7, target_type="price", target=Decimal("1600")))
    listener.resync()
    listener.on_ticks([Tick(INFY, 1599.95)])
    assert queued(redis_conn) == []
    listener.on_ticks([Tick(INFY, 1600.5), Tick(INFY, 1605.0)])  # fired once, not by every tick beyond it
    assert queued(redis_conn) == [("7:TARGET:7", "1600.50")]
    listener.fired["7:TARGET:7"].due = 0.0
    listener.on_ticks([Tick(INFY, 1590.0)])  # back below the target: nothing fires again
    listener.refire_due()
    listener.on_ticks([Tick(INFY, 1605.0)])
    listener.refire_due()
    assert queued(redis_conn) == [("7:TARGET:7", "1600.50")] * 2  # the same event again, while at or beyond
    listener.on_ticks([Tick(INFY, 1390.0)])  # still in position and the price falls through the stop
    assert queued(redis_conn)[2:] == [("7:STOPLOSS:7", "1390.00")]


def test_a_short_stops_above_and_takes_its_target_below(listener, redis_conn):
    runtime.activate(redis_conn, held(7, stop="1", direction="short", stop_loss_type="points"))  # stop 1501
    runtime.activate(redis_conn, held(8, stop="2", direction="short", stop_loss_type="percent",
                                      target_type="points", target=Decimal("50")))  # stop 1530, target 1450
    listener.resync()
    listener.on_ticks([Tick(INFY, 1460.0), Tick(INFY, 1500.9)])
    assert queued(redis_conn) == []
    listener.on_ticks([Tick(INFY, 1501.0)])
    assert queued(redis_conn) == [("7:STOPLOSS:7", "1501.00")]
    listener.on_ticks([Tick(INFY, 1449.0)])
    assert queued(redis_conn)[1:] == [("8:TARGET:8", "1449.00")]


def test_a_trailing_stop_moves_tighter_only_is_written_coalesced_and_survives_a_restart(app, listener, redis_conn,
                                                                                       tmp_path):
    # Stop 1400; every 10 points in favour the stop moves 5.
    runtime.activate(redis_conn, held(7, trail_unit="points", trail_every=Decimal("10"), trail_by=Decimal("5")))
    listener.resync()
    listener.on_ticks([Tick(INFY, 1509.0)])
    assert listener.stop_of(7) == 1400.0
    listener.on_ticks([Tick(INFY, 1510.0), Tick(INFY, 1525.0)])
    assert listener.stop_of(7) == 1410.0
    listener.on_ticks([Tick(INFY, 1500.0)])  # falling back never loosens it
    assert listener.stop_of(7) == 1410.0
    listener.flush_prices()
    run = listener.members[7].run_id
    assert float(redis_conn.hget(keys.runtime(7), runtime.TRAIL_STOP)) == 1410.0
    assert [float(p.split(b":")[1]) for p in redis_conn.lrange(keys.stop_moves(7, run), 0, -1)] == [1410.0]  # coalesced
    assert 0 < redis_conn.ttl(keys.stop_moves(7, run)) <= 2 * 24 * 3600

    listener.on_ticks([Tick(INFY, 1541.0)])  # moved to 1420, not yet flushed: a resync keeps the tighter stop
    listener.resync()
    assert listener.stop_of(7) == 1420.0
    listener.flush_prices()

    quiet = tmp_path / "quiet2.csv"
    quiet.write_text("offset_seconds,symbol,price\n")
    restarted = Listener(app, redis_conn, ScriptedFeed(quiet))
    restarted.resync()
    assert restarted.stop_of(7) == 1420.0  # the tighter of stop_price and trail_stop
    restarted.on_ticks([Tick(INFY, 1551.0)])
    assert restarted.stop_of(7) == 1425.0
    restarted.on_ticks([Tick(INFY, 1425.0)])
    assert queued(redis_conn) == [("7:STOPLOSS:7", "1425.00")]


def test_waiting_entry_is_not_indexed_until_the_in_position_message_brings_its_levels(listener, redis_conn):
    waiting = held(7, stop="1", stop_loss_type="percent", target_type="percent", target=Decimal("1"))
    waiting.status, waiting.position, waiting.entry_price = "waiting_entry", 0, None
    waiting.stop_price = waiting.target_price = None
    runtime.activate(redis_conn, waiting)
    listener.on_message({"seq": listener.seq + 1, "strategy_id": 7, "symbol": "INFY", "status": "waiting_entry"})
    assert 7 in listener.members and 7 not in listener.index
    listener.on_ticks([Tick(INFY, 1520.0)])  # the last price, before the fill
    filled = held(7, stop="1", stop_loss_type="percent", target_type="percent", target=Decimal("1"))
    runtime.update(redis_conn, filled)  # its BUY filled at 1500: stop 1485, target 1515
    listener.on_message({"seq": listener.seq + 1, "strategy_id": 7, "symbol": "INFY", "status": "in_position"})
    # The last known price is already past the target: it fires without waiting for a tick.
    assert queued(redis_conn) == [("7:TARGET:7", "1520.00")]


def test_a_trailing_level_the_last_price_already_passed_moves_the_stop_at_once(listener, redis_conn):
    runtime.activate(redis_conn, held(7, stop="1400"))  # keeps INFY subscribed
    listener.resync()
    listener.on_ticks([Tick(INFY, 1480.0)])
    # A short at 1500 stopped 10 points above; every 10 points in favour the stop comes down 10.
    runtime.activate(redis_conn, held(8, stop="10", stop_loss_type="points", direction="short",
                                      trail_unit="points", trail_every=Decimal("10"), trail_by=Decimal("10")))
    listener.on_message({"seq": listener.seq + 1, "strategy_id": 8, "symbol": "INFY", "status": "in_position"})
    assert listener.stop_of(8) == 1490.0  # 20 in favour already: two moves
    assert queued(redis_conn) == []
    listener.on_ticks([Tick(INFY, 1490.0)])
    assert queued(redis_conn) == [("8:STOPLOSS:8", "1490.00")]


def test_a_stop_that_could_trail_past_the_price_moves_at_once_and_fires_on_that_tick(listener, redis_conn):
    # Every 5 points in favour the stop moves 10: it can pass the price, so it is not left for the turn.
    runtime.activate(redis_conn, held(7, stop="5", stop_loss_type="points", trail_unit="points",
                                      trail_every=Decimal("5"), trail_by=Decimal("10")))  # stop 1495
    listener.resync()
    listener.on_ticks([Tick(INFY, 1504.0)])
    assert listener.pending == {} and queued(redis_conn) == []
    listener.on_ticks([Tick(INFY, 1505.0)])  # the stop moves to 1505: that very price is at it
    assert queued(redis_conn) == [("7:STOPLOSS:7", "1505.00")]


def test_waiting_stops_are_moved_before_a_price_that_could_reach_them_is_checked(listener, redis_conn):
    for sid in (7, 8):  # every 10 in favour, 10 up: stops 1400 → 1480 by the top at 1580; 100 behind the best
        runtime.activate(redis_conn, held(sid, trail_unit="points", trail_every=Decimal("10"), trail_by=Decimal("10")))
    listener.resync()
    listener.on_ticks([Tick(INFY, 1500.0 + 10 * k) for k in range(1, 9)])
    [wait] = listener.pending["NSE:INFY"]
    assert set(wait.stops) == {7, 8} and wait.best == 1580.0 and listener.index.levels(7)[STOP] == 1400.0
    assert listener.stop_of(7) == listener.stop_of(8) == 1480.0
    listener.on_ticks([Tick(INFY, 1500.0)])  # 80 back from the best: no stop can be there yet
    assert listener.index.levels(7)[STOP] == 1400.0 and queued(redis_conn) == []
    listener.on_ticks([Tick(INFY, 1479.0)])  # could be: both moved to 1480 first, then both fire
    assert sorted(queued(redis_conn)) == [("7:STOPLOSS:7", "1479.00"), ("8:STOPLOSS:8", "1479.00")]
    assert listener.pending == {}


def test_a_stop_waiting_when_its_run_ends_does_not_move_the_next_run(listener, redis_conn):
    runtime.activate(redis_conn, held(7, trail_unit="points", trail_every=Decimal("10"), trail_by=Decimal("10")))
    listener.resync()
    listener.on_ticks([Tick(INFY, 1580.0)])
    assert listener.stop_of(7) == 1480.0
    listener.on_message({"seq": listener.seq + 1, "strategy_id": 7, "symbol": "INFY", "status": "stopped"})
    assert listener.pending == {}
    listener.on_ticks([Tick(INFY, 1500.0)])
    again = held(7, trail_unit="points", trail_every=Decimal("10"), trail_by=Decimal("10"))
    again.run_id = 70  # entered at 1500 again: the last run's best (1580) is not this one's
    runtime.activate(redis_conn, again)
    listener.resync()
    assert listener.stop_of(7) == 1400.0 and listener.members[7].run_id == 70


def test_breakeven_moves_the_stop_to_the_entry_and_a_price_back_there_fires_it(listener, redis_conn):
    runtime.activate(redis_conn, held(7, breakeven_at=Decimal("50")))  # entry 1500, stop 1400
    listener.resync()
    listener.on_ticks([Tick(INFY, 1549.0)])
    assert listener.stop_of(7) == 1400.0
    listener.on_ticks([Tick(INFY, 1550.0)])
    assert listener.stop_of(7) == 1500.0
    listener.on_ticks([Tick(INFY, 1500.5)])
    assert queued(redis_conn) == []
    listener.on_ticks([Tick(INFY, 1500.0)])
    assert queued(redis_conn) == [("7:STOPLOSS:7", "1500.00")]


def test_prices_are_pushed_once_a_change_to_the_owners_of_running_strategies_only(listener, redis_conn):
    """What a browser gets between state changes: each user the changed prices of their own instruments, at
    once, then at most once a second an instrument."""
    mine, theirs = held(7), held(8)
    theirs.user_id, theirs.symbol, theirs.instrument_token = 2, "TCS", 2953217
    for strategy in (mine, theirs):
        runtime.activate(redis_conn, strategy)
    listener.resync()
    pushes = redis_conn.pubsub(ignore_subscribe_messages=True)
    pushes.subscribe(f"{keys.PREFIX}flask-socketio")  # webapp/live.py's channel, as the web processes read it

    def pushed() -> list[tuple[str, dict]]:
        got, deadline = [], time.monotonic() + 1.0
        while time.monotonic() < deadline:
            message = pushes.get_message(timeout=0.1)
            if message is not None:
                body = json.loads(message["data"])
                got.append((body["room"], body["data"][0]["prices"]))  # the emit's arguments
            elif got:
                break
        return got

    listener.on_ticks([Tick(INFY, 1510.0)])
    listener.push_prices()
    assert pushed() == [("user:1", {"NSE:INFY": 1510.0})]  # not user 2, who holds TCS only
    listener.push_prices()
    assert pushed() == []  # nothing changed: nothing sent
    listener.on_ticks([Tick(INFY, 1511.0), Tick(INFY, 1512.0)])
    listener.pushed_at["NSE:INFY"] = time.monotonic()  # as if pushed just now (waiting above took a second)
    listener.push_prices()
    assert pushed() == []  # changed, but pushed less than a second ago: held
    listener.pushed_at["NSE:INFY"] -= 1.0
    listener.push_prices()
    assert pushed() == [("user:1", {"NSE:INFY": 1512.0})]  # the latest price, not each tick
    runtime.deactivate(redis_conn, mine)  # its run ended: user 1 no longer sees INFY
    listener.resync()
    listener.on_ticks([Tick(INFY, 1520.0)])
    listener.push_prices()
    assert pushed() == []
