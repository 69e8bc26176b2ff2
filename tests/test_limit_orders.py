"""Order type (issue 13 part 4): a strategy's entry and its exit at sell time go as MARKET (with Kite's market
protection) or as a LIMIT a buffer beyond the last price, turned into MARKET when it is still unfilled after
its wait: the same broker order, modified, never a second one. STOPLOSS, TARGET, STOP and KILL exits are
always MARKET. The paper exchange and the fake Kite (the real kiteconnect client) both take LIMIT orders and
their modification; the engine runs in its real worker and scheduler processes."""
from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from tests.conftest import wait_for
from tests.engine_helpers import broker_orders, orders, run_event, seconds_ahead, start, trader, wait_status
from tests.fake_kite import FakeKite
from tests.helpers import api_register, api_strategy, db_update
from webapp import keys
from webapp.engine.events import BUY, STOP, order_tag
from webapp.models import Strategy

pytestmark = pytest.mark.slow


def paper_orders(conn, event_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """The paper exchange's own record of an event's orders."""
    found = []
    for key in conn.scan_iter(keys.paper_tag("*", order_tag(event_id))):
        for order_id in conn.lrange(key, 0, -1):
            found.append({k.decode(): v.decode() for k, v in conn.hgetall(keys.paper_order(order_id.decode())).items()})
    return found


def limit_strategy(app, client, headers: dict, buy_in: float, sell_in: float, **terms: object) -> int:  # type: ignore[no-untyped-def]
    """A LIMIT strategy made through the API (its buffer left to LIMIT_BUFFER_PCT unless given) and STARTed."""
    sid = api_strategy(client, headers, buy_time=seconds_ahead(buy_in), sell_time=seconds_ahead(sell_in),
                       order_type="LIMIT", **terms)
    start(client, headers, sid)
    return sid


# --- the limit price --------------------------------------------------------------------------------
def test_the_limit_is_marketable_and_on_the_tick(app):
    from webapp.engine.orders import limit_price

    # 1520.30 × 1.001 = 1521.82… → up to 1521.85 for a BUY; × 0.999 = 1518.77… → down to 1518.75 for a SELL.
    assert limit_price("BUY", Decimal("1520.30"), Decimal("0.1")) == Decimal("1521.85")
    assert limit_price("SELL", Decimal("1520.30"), Decimal("0.1")) == Decimal("1518.75")
    assert limit_price("BUY", Decimal("100.00"), Decimal("0")) == Decimal("100.00")
    assert limit_price("SELL", Decimal("810.15"), Decimal("0.5")) == Decimal("806.05")  # 806.099… down


def test_only_the_entry_and_the_sell_time_exit_follow_the_order_type(app, redis_conn):
    from webapp.engine.events import KILL, SELL, STOP, STOPLOSS, TARGET, Event
    from webapp.engine.orders import request_for

    strategy = Strategy(id=7, user_id=1, exchange="NSE", symbol="INFY", product="MIS", quantity=5,
                        order_type="LIMIT", limit_buffer_pct=None, limit_wait_seconds=None, algo_id=None)
    redis_conn.set(keys.last_price("NSE", "INFY"), "1500.00")
    with app.app_context():
        entry = request_for(strategy, Event.for_run(BUY, 7, 1), "BUY", 5)
        assert (entry.order_type, entry.price) == ("LIMIT", Decimal("1501.50"))  # the default 0.1 %
        sell = request_for(strategy, Event.for_run(SELL, 7, 1), "SELL", 5)
        assert (sell.order_type, sell.price) == ("LIMIT", Decimal("1498.50"))
        for kind in (STOPLOSS, TARGET, STOP, KILL):  # an exit that must happen now never waits on a limit
            request = request_for(strategy, Event.for_run(kind, 7, 1), "SELL", 5)
            assert (request.order_type, request.price, request.market_protection) == ("MARKET", None, -1)
        strategy.limit_buffer_pct = Decimal("1.000")
        assert request_for(strategy, Event.for_run(BUY, 7, 1), "BUY", 5).price == Decimal("1515.00")
        redis_conn.delete(keys.last_price("NSE", "INFY"))  # no tick: the paper catalogue's price (1520.35)
        assert request_for(strategy, Event.for_run(BUY, 7, 1), "BUY", 5).price == Decimal("1535.60")
        strategy.order_type = "MARKET"
        assert request_for(strategy, Event.for_run(BUY, 7, 1), "BUY", 5).order_type == "MARKET"


# --- the paper exchange -----------------------------------------------------------------------------
class TestPaperLimit:
    @pytest.fixture
    def app_overrides(self) -> dict:
        return {"PAPER_LATENCY_MS": 0, "PAPER_FILL_MS": 100}

    def test_limit_fills_when_reached_stays_open_otherwise_and_modify_fills_the_rest(self, app, redis_conn):
        from webapp.brokers import BrokerUnavailable, OrderRequest, get_broker
        from webapp.brokers.base import OrderNotModifiable

        price = keys.last_price("NSE", "INFY")
        with app.app_context():
            broker = get_broker("paper", 1)
            redis_conn.set(price, "1500.00")
            at_once = broker.place_order(OrderRequest("NSE", "INFY", "BUY", 10, "MIS", "L1", order_type="LIMIT",
                                                      price=Decimal("1501.50")))
            done = wait_for(lambda: (s := broker.order_status(at_once)).final and s, timeout=5)
            assert (done.status, done.filled_quantity, done.average_price) == ("COMPLETE", 10, Decimal("1500.00"))
            # A fill that raced the modification: the exchange refuses it, and the order is final anyway.
            with pytest.raises(OrderNotModifiable, match="complete"):
                broker.modify_to_market(at_once, -1)

            redis_conn.rpush(keys.paper_faults(), "partial:4")  # 4 fill at the limit, 6 find no seller there
            away = broker.place_order(OrderRequest("NSE", "INFY", "SELL", 10, "MIS", "L2", order_type="LIMIT",
                                                   price=Decimal("1510.00")))
            redis_conn.set(price, "1505.00")
            time.sleep(0.3)  # past its fill time: not reached, it stays OPEN
            assert (broker.order_status(away).status, broker.order_status(away).filled_quantity) == ("OPEN", 0)
            redis_conn.set(price, "1512.00")  # reached: the planned 4 fill at 1512 (better than the limit)
            part = wait_for(lambda: (s := broker.order_status(away)).filled_quantity and s, timeout=5)
            assert (part.status, part.filled_quantity, part.average_price) == ("OPEN", 4, Decimal("1512.00"))
            redis_conn.set(price, "1490.00")
            redis_conn.rpush(keys.paper_followup_faults(), "error500")
            with pytest.raises(BrokerUnavailable, match="500"):
                broker.modify_to_market(away, -1)
            broker.modify_to_market(away, -1)  # the rest, 6, at market: 1490
            final = wait_for(lambda: (s := broker.order_status(away)).final and s, timeout=5)
            assert (final.status, final.filled_quantity, final.average_price) == ("COMPLETE", 10, Decimal("1498.80"))
            assert broker.net_quantity("NSE", "INFY", "MIS") == 0  # bought 10, sold 10

    def test_a_fill_that_races_the_modification_is_followed_not_replaced(self, app, redis_conn):
        """The exchange fills the LIMIT just before the modification reaches it: the modification is refused
        (the order is COMPLETE) and the order is followed to that fill. Nothing else is placed."""
        from webapp.brokers import get_broker
        from webapp.engine.events import Event
        from webapp.engine.orders import follow, request_for

        price = keys.last_price("NSE", "INFY")
        strategy = Strategy(id=9, user_id=1, exchange="NSE", symbol="INFY", product="MIS", quantity=10,
                            order_type="LIMIT", limit_buffer_pct=None, limit_wait_seconds=1, algo_id=None)
        event = Event.for_run(BUY, 9, 1)
        with app.app_context():
            paper = get_broker("paper", 1)
            redis_conn.set(price, "1500.00")
            request = request_for(strategy, event, "BUY", 10)
            redis_conn.set(price, "1600.00")  # moved away: the LIMIT at 1501.50 rests
            order_id = paper.place_order(request)
            refused = []

            class Racing:
                def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
                    return getattr(paper, name)

                def modify_to_market(self, order_id: str, market_protection: float) -> None:
                    redis_conn.set(price, "1500.00")  # back to the limit: it fills first
                    wait_for(lambda: paper.order_status(order_id).final, timeout=5)
                    try:
                        paper.modify_to_market(order_id, market_protection)
                    except Exception as exc:
                        refused.append(exc)
                        raise

            state = follow(Racing(), order_id, event, strategy, request)
        assert (state.status, state.filled_quantity, state.average_price) == ("COMPLETE", 10, Decimal("1500.00"))
        assert [type(e).__name__ for e in refused] == ["OrderNotModifiable"]
        [order] = paper_orders(redis_conn, event.event_id)
        assert (order["order_type"], order.get("modified")) == ("LIMIT", None)


# --- the engine, in paper mode, through its real processes ------------------------------------------
def log_lines(processes, name: str, msg: str) -> list[dict]:  # type: ignore[no-untyped-def]
    found = []
    for line in processes.log(name).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == msg:
            found.append(entry)
    return found


def test_a_marketable_limit_entry_fills_at_once_and_a_stop_goes_at_market(app, client, processes, redis_conn):
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    headers = trader(client, "limit1@example.com")
    redis_conn.set(keys.last_price("NSE", "INFY"), "1500.00")  # the listener's last tick (no feed runs here)
    sid = limit_strategy(app, client, headers, buy_in=2, sell_in=120)
    held = wait_status(client, headers, sid, "in_position")
    assert held["position"] == 10 and Decimal(str(held["entry_price"])) == Decimal("1500.00")
    [order] = paper_orders(redis_conn, run_event(BUY, sid).event_id)
    assert (order["order_type"], order["limit_price"], order.get("modified")) == ("LIMIT", "1501.50", None)
    assert client.post(f"/api/v1/strategy/{sid}/stop", headers=headers).status_code == 202
    wait_status(client, headers, sid, "stopped")
    [stop] = paper_orders(redis_conn, run_event(STOP, sid).event_id)
    assert (stop["order_type"], stop["limit_price"], stop["side"]) == ("MARKET", "", "SELL")
    assert not log_lines(processes, "worker", "limit order unfilled after its wait: turning it to MARKET")


def test_an_unfilled_limit_entry_is_modified_to_market_and_fills(app, client, processes, redis_conn):
    """The price moves away between the order's pricing and its fill time: the LIMIT stays OPEN, and after
    its wait the same order is modified to MARKET and fills at the new price. One order at the broker."""
    processes.env = {**processes.env, "PAPER_FILL_MS": "800"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    headers = trader(client, "limit2@example.com")
    price = keys.last_price("NSE", "INFY")
    redis_conn.set(price, "1500.00")
    sid = limit_strategy(app, client, headers, buy_in=2, sell_in=120, limit_wait_seconds=2)
    event = run_event(BUY, sid)
    wait_for(lambda: broker_orders(redis_conn, event.event_id) == 1, timeout=10, what="the LIMIT at the broker")
    redis_conn.set(price, "1600.00")  # before its fill time: the limit (1501.50) is not reached
    held = wait_status(client, headers, sid, "in_position", timeout=15)
    assert held["position"] == 10 and Decimal(str(held["entry_price"])) == Decimal("1600.00")
    [order] = paper_orders(redis_conn, event.event_id)
    assert (order["order_type"], order["limit_price"], order["modified"], order["market_protection"]) == (
        "MARKET", "1501.50", "1", "-1")
    assert broker_orders(redis_conn, event.event_id) == 1
    assert [(o["event"], o["status"], o["filled_quantity"]) for o in orders(client, headers, sid)] == [
        ("BUY", "COMPLETE", 10)]
    [modified] = log_lines(processes, "worker", "limit order modified to MARKET")
    assert (modified["strategy_id"], modified["event_id"]) == (sid, event.event_id)


# --- the fake Kite, through the real kiteconnect client ---------------------------------------------
class TestKiteLimit:
    @pytest.fixture
    def fake(self):  # type: ignore[no-untyped-def]
        with FakeKite(stall_seconds=2.5, latency=0.02, fill_delay=0.2) as kite:
            yield kite

    @pytest.fixture
    def app_overrides(self, fake) -> dict:  # type: ignore[no-untyped-def]
        return {"BROKER": "kite", "FEED": "kite", "KITE_API_ROOT": fake.rest_url, "KITE_TICKER_ROOT": fake.ws_url,
                "KITE_LOGIN_URL": fake.login_url, "KITE_TIMEOUT_SECONDS": 1.0, "KITE_FEED_API_KEY": fake.api_key,
                "KITE_FEED_ACCESS_TOKEN": fake.access_token, "TRADING_CALENDAR": "always"}

    def test_the_modification_carries_market_and_its_protection_and_a_500_is_retried_not_replaced(
            self, app, client, fake, processes, redis_conn):
        processes.start("worker", "jobs.worker")
        processes.start("scheduler", "jobs.scheduler")
        headers = api_register(client, "klimit@example.com")
        account = fake.account
        assert client.post("/api/v1/broker/connect", headers=headers, json={
            "api_key": account.api_key, "api_secret": account.api_secret,
            "access_token": account.access_token}).status_code == 200
        redis_conn.set(keys.last_price("NSE", "INFY"), "1500.00")  # the last tick the listener stored
        fake.set_price("NSE", "INFY", 1600.0)  # Kite's market has moved on: the LIMIT at 1501.50 rests
        fake.fail_next(1, status=500, method="PUT", path="/orders/")  # the first modification answers 500
        sid = limit_strategy(app, client, headers, buy_in=2, sell_in=120, limit_wait_seconds=1)
        held = wait_status(client, headers, sid, "in_position", timeout=15)
        assert held["position"] == 10 and Decimal(str(held["entry_price"])) == Decimal("1600.00")
        [placement] = fake.placements  # one order placed, whatever the modification met
        assert (placement["params"]["order_type"], placement["params"]["price"],
                placement["params"].get("market_protection")) == ("LIMIT", "1501.5", None)
        assert [r.status for r in fake.requests if r.method == "PUT"] == [500, 200]
        assert [(m["order_id"], m["params"]["order_type"], m["params"]["market_protection"], m["outcome"])
                for m in fake.modifications] == [(placement["order_id"], "MARKET", "-1", "modified")]
        [order] = fake.orders
        assert (order["order_type"], order["status"], order["filled_quantity"], order["market_protection"]) == (
            "MARKET", "COMPLETE", 10, -1)
        assert log_lines(processes, "worker", "modification to MARKET failed: trying again")


def test_kite_broker_limit_and_modify_on_kites_wire():
    """KiteBroker through kiteconnect against the fake: a LIMIT carries its price and no market protection; a
    modification to MARKET without protection is refused as Kite refuses it; with it, the order fills; a
    modification of a COMPLETE order is Kite's InputException, which the broker names OrderNotModifiable."""
    import kiteconnect.exceptions as kex
    from kiteconnect import KiteConnect

    from webapp.brokers import Credentials, OrderRequest
    from webapp.brokers.base import OrderNotModifiable
    from webapp.brokers.kite import KiteBroker

    with FakeKite(fill_delay=0.0) as fake:
        fake.set_price("NSE", "INFY", 1600.0)
        broker = KiteBroker(fake.rest_url, Credentials(fake.api_key, fake.api_secret, fake.access_token), timeout=2)
        order_id = broker.place_order(OrderRequest("NSE", "INFY", "BUY", 5, "MIS", "K1", order_type="LIMIT",
                                                   price=Decimal("1501.50")))
        assert (fake.order(order_id)["status"], fake.order(order_id)["price"]) == ("OPEN", 1501.5)
        assert "market_protection" not in fake.placements[0]["params"]
        with pytest.raises(kex.InputException, match="market protection"):
            KiteConnect(fake.api_key, access_token=fake.access_token, root=fake.rest_url).modify_order(
                "regular", order_id, order_type="MARKET")
        broker.modify_to_market(order_id, -1.0)
        state = broker.order_status(order_id)
        assert (state.status, state.filled_quantity, state.average_price) == ("COMPLETE", 5, Decimal("1600.00"))
        assert [m["params"].get("market_protection") for m in fake.modifications] == [None, "-1"]
        with pytest.raises(OrderNotModifiable, match="complete"):
            broker.modify_to_market(order_id, -1)


# --- a LIMIT that cannot be turned to MARKET is cancelled; a LIMIT found by tag is followed as a LIMIT ------
class TestLimitLeftWorking:
    @pytest.fixture
    def app_overrides(self) -> dict:
        return {"PAPER_LATENCY_MS": 0, "PAPER_FILL_MS": 100, "ORDER_CONFIRM_TIMEOUT": 0.6}

    @staticmethod
    def strategy(sid: int = 9) -> Strategy:
        return Strategy(id=sid, user_id=1, exchange="NSE", symbol="INFY", product="MIS", quantity=10,
                        order_type="LIMIT", limit_buffer_pct=None, limit_wait_seconds=0.3, algo_id=None)

    def test_paper_cancel_keeps_what_filled_and_refuses_a_final_order(self, app, redis_conn):
        from webapp.brokers import BrokerUnavailable, OrderRequest, get_broker
        from webapp.brokers.base import OrderNotCancellable

        with app.app_context():
            paper = get_broker("paper", 1)
            redis_conn.set(keys.last_price("NSE", "INFY"), "1500.00")
            redis_conn.rpush(keys.paper_faults(), "partial:4")  # 4 fill at the limit, 6 rest OPEN
            order_id = paper.place_order(OrderRequest("NSE", "INFY", "BUY", 10, "MIS", "C1", order_type="LIMIT",
                                                      price=Decimal("1501.50")))
            part = wait_for(lambda: (s := paper.order_status(order_id)).filled_quantity and s, timeout=5)
            assert (part.status, part.filled_quantity, part.order_type) == ("OPEN", 4, "LIMIT")
            # A fault aimed at one kind of call waits for it: the status read passes it by, the cancel meets it.
            redis_conn.rpush(keys.paper_followup_faults(), "cancel:error500")
            assert paper.order_status(order_id).status == "OPEN"
            with pytest.raises(BrokerUnavailable, match="500"):
                paper.cancel_order(order_id)
            paper.cancel_order(order_id)
            done = paper.order_status(order_id)
            assert (done.status, done.filled_quantity, done.average_price) == ("CANCELLED", 4, Decimal("1500.00"))
            assert paper.net_quantity("NSE", "INFY", "MIS") == 4  # what filled is held
            with pytest.raises(OrderNotCancellable, match="cancelled"):
                paper.cancel_order(order_id)

    def test_a_found_limit_is_turned_to_market_whatever_the_rebuilt_request(self, app, client, redis_conn):
        """A worker crashed between the broker's accept and its record; the event is sent again and its
        request rebuilt from today's strategy is MARKET (no price known now). The careful path finds the LIMIT
        by tag and follows it as the LIMIT it is: its wait, then the modification to MARKET, one order."""
        from webapp.brokers import OrderRequest, get_broker
        from webapp.engine.events import Event
        from webapp.engine.locks import Held, Locks
        from webapp.engine.orders import execute
        from webapp.extensions import db
        from webapp.models import OrderLog, utcnow

        headers = api_register(client, "found@example.com")
        sid = api_strategy(client, headers, order_type="LIMIT", limit_wait_seconds=1)
        price = keys.last_price("NSE", "INFY")
        with app.app_context():
            strategy = db.session.get(Strategy, sid)
            event = Event.for_run(BUY, sid, 1)
            paper = get_broker("paper", strategy.user_id)
            redis_conn.set(price, "1600.00")  # the market moved away: the LIMIT at 1501.50 rests
            order_id = paper.place_order(OrderRequest("NSE", "INFY", "BUY", 10, "MIS", event.tag, order_type="LIMIT",
                                                      price=Decimal("1501.50")))
            row = OrderLog(strategy_id=sid, user_id=strategy.user_id, event=BUY, event_id=event.event_id, side="BUY",
                           quantity=10, tag=event.tag, status="TIMEOUT", attempt=1, holder="crashed",
                           claimed_at=utcnow(), error="no answer")
            db.session.add(row)
            db.session.commit()
            rebuilt = OrderRequest("NSE", "INFY", "BUY", 10, "MIS", event.tag)  # MARKET
            state, found, note = execute(paper, strategy, event, rebuilt, Held(sid, "second"),
                                         Locks(redis_conn, 5), None)
            assert (state.status, state.filled_quantity, state.average_price) == ("COMPLETE", 10, Decimal("1600.00"))
            assert (found.id, note) == (row.id, "found by tag after an unanswered attempt")
            db.session.remove()
        [order] = paper_orders(redis_conn, event.event_id)
        assert (order["order_type"], order["limit_price"], order["modified"]) == ("MARKET", "1501.50", "1")
        assert state.order_id == order_id

    def test_kite_limit_not_turned_to_market_is_cancelled_with_what_filled(self, app, redis_conn):
        """The modification answers 500 until its deadline and the LIMIT (4 of 10 filled) is still OPEN: it is
        cancelled (DELETE /orders/regular/{id}, a 500 tried again) and followed to CANCELLED with its 4. A
        cancel that a fill raced is refused as Kite refuses it, and the order is followed to that fill."""
        import re

        from webapp.brokers import Credentials, OrderRequest
        from webapp.brokers.kite import KiteBroker
        from webapp.engine.events import Event
        from webapp.engine.orders import follow

        with FakeKite(fill_delay=0.0) as fake, app.app_context():
            fake.set_price("NSE", "INFY", 1600.0)
            kite = KiteBroker(fake.rest_url, Credentials(fake.api_key, fake.api_secret, fake.access_token), timeout=2)
            strategy, event = self.strategy(), Event.for_run(BUY, 9, 1)
            request = OrderRequest("NSE", "INFY", "BUY", 10, "MIS", event.tag, order_type="LIMIT",
                                   price=Decimal("1501.50"))
            order_id = kite.place_order(request)
            fake.fill_order(order_id, quantity=4, price=1501.0)
            fake.fail_next(1000, status=500, method="PUT", path=re.compile(f"/orders/regular/{order_id}"))
            fake.fail_next(1, status=500, method="DELETE", path="/orders/")
            state = follow(kite, order_id, event, strategy, request)
            assert (state.status, state.filled_quantity, state.average_price) == ("CANCELLED", 4, Decimal("1501.00"))
            assert "cancelled by the engine" in state.message
            assert [(r.path, r.status) for r in fake.requests if r.method == "DELETE"] == [
                (f"/orders/regular/{order_id}", 500), (f"/orders/regular/{order_id}", 200)]
            assert [(c["variety"], c["order_id"], c["outcome"]) for c in fake.cancellations] == [
                ("regular", order_id, "cancelled")]
            assert fake.modifications == []  # every PUT was answered 500 before it reached the book

            raced = kite.place_order(replace_tag(request, "C2"))

            class Racing:
                def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
                    return getattr(kite, name)

                def cancel_order(self, order_id: str) -> None:
                    fake.fill_order(order_id, price=1500.0)  # the exchange fills it first
                    kite.cancel_order(order_id)

            fake.fail_next(1000, status=500, method="PUT", path=re.compile(f"/orders/regular/{raced}"))
            state = follow(Racing(), raced, event, strategy, request)
            assert (state.status, state.filled_quantity, state.average_price) == ("COMPLETE", 10, Decimal("1500.00"))
            assert [(c["order_id"], c["outcome"]) for c in fake.cancellations[1:]] == [(raced, "COMPLETE")]
            refusal = [r for r in fake.requests if r.method == "DELETE"][-1]
            assert (refusal.status, refusal.error_type) == (400, "InputException")

    def test_kite_session_expired_on_a_working_limit_is_unknown_and_says_it_may_be_open(self, app, redis_conn):
        from webapp.brokers import Credentials, OrderRequest
        from webapp.brokers.kite import KiteBroker
        from webapp.engine.events import Event
        from webapp.engine.orders import OrderUnknown, follow

        with FakeKite(fill_delay=0.0) as fake, app.app_context():
            fake.set_price("NSE", "INFY", 1600.0)
            kite = KiteBroker(fake.rest_url, Credentials(fake.api_key, fake.api_secret, fake.access_token), timeout=2)
            event = Event.for_run(BUY, 9, 1)
            request = OrderRequest("NSE", "INFY", "BUY", 10, "MIS", event.tag, order_type="LIMIT",
                                   price=Decimal("1501.50"))
            order_id = kite.place_order(request)
            fake.expire_token()
            with pytest.raises(OrderUnknown, match="may still be open"):
                follow(kite, order_id, event, self.strategy(), request)
            assert [(r.method, r.status) for r in fake.requests if r.method == "DELETE"] == [("DELETE", 403)]
            assert fake.order(order_id)["status"] == "OPEN"


def replace_tag(request, tag: str):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(request, tag=tag)


def test_an_unmodifiable_paper_limit_is_cancelled_and_the_run_holds_what_filled(app, client, processes, redis_conn):
    """The paper exchange fills 4 of 10 at the limit and answers every modification 500: after its wait, the
    modification's deadline and one more ORDER_CONFIRM_TIMEOUT, the LIMIT is cancelled, and the run holds the 4
    the broker filled, watched, instead of failing as "position unknown" with 6 still open at the broker."""
    processes.env = {**processes.env, "ORDER_CONFIRM_TIMEOUT": "1"}
    processes.start("worker", "jobs.worker")
    processes.start("scheduler", "jobs.scheduler")
    headers = trader(client, "limit3@example.com")
    redis_conn.set(keys.last_price("NSE", "INFY"), "1500.00")
    redis_conn.rpush(keys.paper_faults(), "partial:4")
    redis_conn.rpush(keys.paper_followup_faults(), *["modify:error500"] * 200)
    sid = limit_strategy(app, client, headers, buy_in=2, sell_in=120, limit_wait_seconds=1)
    event = run_event(BUY, sid)
    held = wait_status(client, headers, sid, "in_position", timeout=15)
    assert held["position"] == 4 and Decimal(str(held["entry_price"])) == Decimal("1500.00")
    assert not held["needs_attention"]
    [order] = paper_orders(redis_conn, event.event_id)
    assert (order["order_type"], order["status"], order["filled_quantity"], order["cancelled"]) == (
        "LIMIT", "CANCELLED", "4", "1")
    [row] = orders(client, headers, sid)
    assert (row["status"], row["filled_quantity"]) == ("CANCELLED", 4) and "cancelled by the engine" in row["error"]
    [accepted] = log_lines(processes, "worker", "cancel accepted: reading the order's state")
    assert (accepted["strategy_id"], accepted["event_id"]) == (sid, event.event_id) and accepted["broker_order_id"]
    redis_conn.delete(keys.paper_followup_faults())
