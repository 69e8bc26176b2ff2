"""A local fake of Zerodha Kite Connect for tests, speaking Kite's wire formats to the real clients.

    from kiteconnect import KiteConnect
    from tests.fake_kite import FakeKite

    with FakeKite(stall_seconds=1.0) as fake:
        kite = KiteConnect(fake.api_key, access_token=fake.access_token, root=fake.rest_url, timeout=0.3)
        order_id = kite.place_order("regular", "NSE", "INFY", "BUY", 1, "MIS", "MARKET", tag="s1",
                                    market_protection=-1)  # Kite refuses MARKET/SL-M orders without it
        assert kite.order_history(order_id)[-1]["status"] == "COMPLETE"

REST (`fake.rest_url`, http://127.0.0.1:PORT): /session/token, /user/profile, /user/margins, /orders (place,
modify, cancel, list, history, trades), /trades, /portfolio/positions|holdings, /instruments[/EXCHANGE] (CSV),
/quote, /quote/ohlc, /quote/ltp; plus /connect/login (stands in for kite.zerodha.com's login page).
Ticker (`fake.ws_url`, ws://127.0.0.1:PORT2): see tests.fake_kite.ticker.

Postbacks: FakeKite(postback_url=...) POSTs Kite's postback JSON on COMPLETE, CANCELLED, REJECTED, and UPDATE
(a partial fill or a modification), from one sender thread; order updates also go out on the ticker.

Control methods (in-process only): fail_next, time_out_next_request, time_out_next_order_after_accept,
reject_next_order, partial_fill_next, expire_token, drop_ticker_connections, drop_rest_connections,
set_latency, set_postback_url, drop_postbacks, set_price, tick, fill_order / cancel_order / reject_order
(with auto_fill=False), orders / order / history, placements, modifications, cancellations, postbacks,
order_post_times, throttled_times, max_rate, requests_per_second, requests, wait_for_subscription,
wait_for_orders, wait_for_postbacks, reset.

As a process: `python -m tests.fake_kite --port 9100 --ws-port 9101` (prints the URLs and env lines; see
tests.fake_kite.__main__ for --latency, --fill-delay, --postback-url).
"""
from tests.fake_kite.core import IST, Account, FakeKite, RequestRecord
from tests.fake_kite.instruments import DEFAULT_INSTRUMENTS, Instrument, MarketData, load_csv
from tests.fake_kite.ticker import pack_frame, pack_packet

__all__ = ["IST", "Account", "FakeKite", "RequestRecord", "DEFAULT_INSTRUMENTS", "Instrument", "MarketData",
           "load_csv", "pack_frame", "pack_packet"]
