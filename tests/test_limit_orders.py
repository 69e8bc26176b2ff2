"""Order type (issue 13 part 4): a strategy's entry and its exit at sell time go as MARKET (with Kite's market
protection) or as a LIMIT a buffer beyond the last price, turned into MARKET when it is still unfilled after
its wait: the same broker order, modified, never a second one. STOPLOSS, TARGET, STOP and KILL exits are
always MARKET. The paper exchange and the fake Kite (the real kiteconnect client) both take LIMIT orders and
their modification; the engine runs in its real worker and scheduler processes."""
from __future__ import annotations

import time
from decimal import Decimal

import pytest

from tests.conftest import wait_for
from tests.engine_helpers import broker_orders, orders, run_event, started_strategy, trader, wait_status
from tests.fake_kite import Account, FakeKite
from tests.helpers import api_register, api_strategy, db_update
from tests.engine_helpers import start, seconds_ahead
from webapp import keys
from webapp.engine.events import BUY, order_tag
from webapp.models import Strategy

pytestmark = pytest.mark.slow


def paper_orders(conn, event_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """The paper exchange's own record of an event's orders."""
    found = []
    for key in conn.scan_iter(keys.paper_tag("*", order_tag(event_id))):
        for order_id in conn.lrange(key, 0, -1):
            found.append({k.decode(): v.decode() for k, v in conn.hgetall(keys.paper_order(order_id.decode())).items()})
    return found


def limit_strategy(app, client, headers: dict, buy_in: float, sell_in: float, **columns: object) -> int:  # type: ignore[no-untyped-def]
    """A strategy made through the API, then given its order type straight in the database before START: the
    JSON API's validator (webapp/services/strategies.py, another change) may not take order_type yet."""
    sid = api_strategy(client, headers, buy_time=seconds_ahead(buy_in), sell_time=seconds_ahead(sell_in))
    db_update(app, Strategy, sid, order_type="LIMIT", **columns)
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
