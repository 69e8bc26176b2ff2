"""The fake Kite (tests/fake_kite) proven through the REAL kiteconnect clients: every route the app uses, each
fault control mapped to the exception kiteconnect raises, Kite's 10 orders/s limit, Kite's 2026 market
protection rule, latency, partial fills, postbacks, and KiteTicker ticks."""
from __future__ import annotations

import hashlib
import json
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kex

from tests.fake_kite import FakeKite
from tests.fake_kite.rest import _Handler
from tests.fake_kite.ticker import wait

ROOT = Path(__file__).resolve().parent.parent
KITE_CSV_HEADER = ("instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,lot_size,"
                   "instrument_type,segment,exchange")
INFY, RELIANCE, SBIN, NIFTY = 408065, 738561, 779521, 256265
NO_PROTECTION = ("Market orders without market protection are not allowed via API. Please set market protection or "
                 "use a Limit order.")
POSTBACK_FIELDS = {  # Kite's postback payload, field for field
    "user_id", "unfilled_quantity", "app_id", "checksum", "placed_by", "order_id", "exchange_order_id",
    "parent_order_id", "status", "status_message", "status_message_raw", "order_timestamp",
    "exchange_update_timestamp", "exchange_timestamp", "variety", "exchange", "tradingsymbol", "instrument_token",
    "order_type", "transaction_type", "validity", "product", "quantity", "disclosed_quantity", "price",
    "trigger_price", "average_price", "filled_quantity", "pending_quantity", "cancelled_quantity",
    "market_protection", "meta", "tag", "guid"}


@pytest.fixture
def fake():  # type: ignore[no-untyped-def]
    with FakeKite(stall_seconds=1.0) as running:
        yield running


def kite(fake: FakeKite, **kwargs: Any) -> KiteConnect:
    return KiteConnect(fake.api_key, access_token=fake.access_token, root=fake.rest_url, **kwargs)


def buy(client: KiteConnect, tag: str, symbol: str = "INFY", quantity: int = 1,
        market_protection: float | str | None = -1, **kwargs: Any) -> str:
    """A MARKET BUY with Kite's automatic market protection (None: without, which Kite refuses since 2026)."""
    return client.place_order(variety=KiteConnect.VARIETY_REGULAR, exchange="NSE", tradingsymbol=symbol,
                              transaction_type="BUY", quantity=quantity, product="MIS",
                              order_type=kwargs.pop("order_type", "MARKET"), tag=tag,
                              market_protection=market_protection, **kwargs)


def elapsed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


# --- session and profile ---------------------------------------------------------------------------------
def test_generate_session_checks_the_checksum(fake: FakeKite) -> None:
    client = KiteConnect(fake.api_key, root=fake.rest_url)
    session = client.generate_session(fake.account.request_token, api_secret=fake.api_secret)
    assert session["access_token"] == fake.access_token == client.access_token
    assert session["user_id"] == fake.account.user_id and session["api_key"] == fake.api_key
    assert isinstance(session["login_time"], datetime)
    assert client.profile()["user_id"] == fake.account.user_id

    with pytest.raises(kex.TokenException, match="checksum") as wrong:
        KiteConnect(fake.api_key, root=fake.rest_url).generate_session(fake.account.request_token, "not-the-secret")
    assert wrong.value.code == 403

    # Issued request tokens are single-use, as Kite's are.
    issued = fake.issue_request_token()
    assert KiteConnect(fake.api_key, root=fake.rest_url).generate_session(issued, fake.api_secret)["access_token"]
    with pytest.raises(kex.TokenException, match="invalid or has expired"):
        KiteConnect(fake.api_key, root=fake.rest_url).generate_session(issued, fake.api_secret)

    # The wire, as Kite has it: form fields in, an error envelope with its HTTP code out.
    checksum = hashlib.sha256(f"{fake.api_key}whatever-token{fake.api_secret}".encode()).hexdigest()
    raw = requests.post(f"{fake.rest_url}/session/token", timeout=2,
                        data={"api_key": fake.api_key, "request_token": "whatever-token", "checksum": checksum})
    assert raw.status_code == 403 and raw.headers["Content-Type"] == "application/json"
    assert raw.json() == {"status": "error", "error_type": "TokenException", "data": None,
                          "message": "Token is invalid or has expired."}


def test_profile_needs_a_known_token(fake: FakeKite) -> None:
    profile = kite(fake).profile()
    assert profile["user_id"] == fake.account.user_id and profile["broker"] == "ZERODHA"
    with pytest.raises(kex.TokenException) as bad:
        KiteConnect(fake.api_key, access_token="someone-elses", root=fake.rest_url).profile()
    assert bad.value.code == 403
    raw = requests.get(f"{fake.rest_url}/user/profile", timeout=2,
                       headers={"Authorization": f"token {fake.api_key}:{fake.access_token}"})
    assert raw.headers["Content-Type"] == "application/json" and raw.json()["status"] == "success"


# --- orders ----------------------------------------------------------------------------------------------
def test_market_order_goes_open_to_complete_at_the_last_price(fake: FakeKite) -> None:
    client = kite(fake)
    fake.set_price("NSE", "INFY", 1612.35)
    order_id = buy(client, "s1buy", quantity=5)
    history = client.order_history(order_id)
    assert [h["status"] for h in history] == ["PUT ORDER REQ RECEIVED", "VALIDATION PENDING", "OPEN PENDING",
                                              "OPEN", "COMPLETE"]
    assert history[0]["filled_quantity"] == 0 and history[0]["exchange_order_id"] is None
    done = history[-1]
    assert done["order_id"] == order_id and done["tag"] == "s1buy" and done["tradingsymbol"] == "INFY"
    assert done["filled_quantity"] == 5 and done["pending_quantity"] == 0 and done["average_price"] == 1612.35
    assert isinstance(done["order_timestamp"], datetime) and done["exchange_order_id"]
    assert client.order_trades(order_id)[0]["quantity"] == 5
    assert client.positions()["net"][0]["quantity"] == 5


def test_held_fills_show_open_then_partial_then_complete(fake: FakeKite) -> None:
    client = kite(fake)
    fake.auto_fill = False
    order_id = buy(client, "held", quantity=4)
    assert client.order_history(order_id)[-1]["status"] == "OPEN"
    fake.fill_order(order_id, quantity=1, price=1500.0)
    partial = client.order_history(order_id)[-1]
    assert (partial["status"], partial["filled_quantity"], partial["pending_quantity"]) == ("OPEN", 1, 3)
    fake.fill_order(order_id, price=1510.0)
    done = client.order_history(order_id)[-1]
    assert (done["status"], done["filled_quantity"], done["average_price"]) == ("COMPLETE", 4, 1507.5)


def test_orders_finds_an_order_by_tag(fake: FakeKite) -> None:
    client = kite(fake)
    first, second = buy(client, "alpha1"), buy(client, "beta2", symbol="SBIN", quantity=2)
    found = [o for o in client.orders() if o["tag"] == "beta2"]
    assert [o["order_id"] for o in found] == [second] and found[0]["status"] == "COMPLETE"
    assert {o["tag"] for o in fake.orders} == {"alpha1", "beta2"} and fake.order(first)["tags"] == ["alpha1"]


def test_reject_next_order_returns_an_id_then_rejected(fake: FakeKite) -> None:
    client = kite(fake)
    message = "RMS:Margin Exceeds,Required:15205.00, Available:1000.00"
    fake.reject_next_order(message)
    order_id = buy(client, "poor")
    last = client.order_history(order_id)[-1]
    assert (last["status"], last["status_message"], last["filled_quantity"]) == ("REJECTED", message, 0)
    assert client.order_history(buy(client, "rich"))[-1]["status"] == "COMPLETE"  # only the next one


@pytest.mark.parametrize(("order_type", "market_protection", "extra"), [
    ("MARKET", None, {}), ("MARKET", 0, {}), ("SL-M", None, {"trigger_price": 1400.0}),
])
def test_market_orders_without_market_protection_are_refused(fake: FakeKite, order_type: str,
                                                             market_protection: int | None, extra: dict) -> None:
    with pytest.raises(kex.InputException) as refused:
        buy(kite(fake), "bare", order_type=order_type, market_protection=market_protection, **extra)
    assert str(refused.value) == NO_PROTECTION and refused.value.code == 400
    assert fake.orders == [] and fake.placements[-1]["order_id"] is None


def test_refusal_is_kites_envelope_on_the_wire(fake: FakeKite) -> None:
    raw = requests.post(f"{fake.rest_url}/orders/regular", timeout=2,
                        headers={"Authorization": f"token {fake.api_key}:{fake.access_token}"},
                        data={"exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY",
                              "quantity": 1, "product": "MIS", "order_type": "MARKET"})
    assert raw.status_code == 400 and raw.headers["Content-Type"] == "application/json"
    assert raw.json() == {"status": "error", "message": NO_PROTECTION, "data": None, "error_type": "InputException"}


@pytest.mark.parametrize("market_protection", [150, -5, "abc", 100.5, "nan"])
def test_out_of_range_market_protection_is_invalid(fake: FakeKite, market_protection: object) -> None:
    with pytest.raises(kex.InputException, match=r"^Invalid `market_protection`\.$") as invalid:
        buy(kite(fake), "odd", market_protection=market_protection)
    assert invalid.value.code == 400 and fake.orders == []


def test_market_protection_and_algo_id_are_recorded(fake: FakeKite) -> None:
    client = kite(fake)
    auto = buy(client, "auto", algo_id="ALGO42")
    custom = buy(client, "custom", market_protection=2.5)
    full = buy(client, "full", market_protection=100)
    limit = buy(client, "limit", order_type="LIMIT", price=99999.0, market_protection=None)  # LIMIT needs none
    assert [fake.order(o)["status"] for o in (auto, custom, full, limit)] == ["COMPLETE"] * 4
    assert [fake.order(o)["market_protection"] for o in (auto, custom, full, limit)] == [-1, 2.5, 100, 0]
    assert fake.order(auto)["algo_id"] == "ALGO42" and "algo_id" not in fake.order(custom)
    assert client.order_history(custom)[-1]["market_protection"] == 2.5
    # What the client sent, per placement: a test of the app asserts every order carried these.
    assert [p["order_id"] for p in fake.placements] == [auto, custom, full, limit]
    assert all(p["api_key"] == fake.api_key for p in fake.placements)
    assert [p["params"].get("market_protection") for p in fake.placements] == ["-1", "2.5", "100", None]
    assert fake.placements[0]["params"]["algo_id"] == "ALGO42" and fake.placements[0]["params"]["tag"] == "auto"


def test_fill_delay_reports_open_then_complete() -> None:
    with FakeKite(fill_delay=0.3) as fake:
        client = kite(fake)
        order_id = buy(client, "slow")
        assert client.order_history(order_id)[-1]["status"] == "OPEN"
        assert wait(lambda: client.order_history(order_id)[-1]["status"] == "COMPLETE", 3.0)
        assert [h["status"] for h in client.order_history(order_id)][-2:] == ["OPEN", "COMPLETE"]
        # Cancelled while it waits: it never fills.
        cancelled = buy(client, "undone")
        client.cancel_order(KiteConnect.VARIETY_REGULAR, cancelled)
        time.sleep(0.45)
        assert (fake.order(cancelled)["status"], fake.order(cancelled)["filled_quantity"]) == ("CANCELLED", 0)


def test_partial_fill_next_fills_part_then_cancels_the_rest(fake: FakeKite) -> None:
    client = kite(fake)
    fake.set_price("NSE", "INFY", 1500.0)
    fake.partial_fill_next(3, n=2)
    first = client.order_history(buy(client, "part1", quantity=10))[-1]
    assert (first["status"], first["filled_quantity"], first["cancelled_quantity"], first["pending_quantity"]) == \
        ("CANCELLED", 3, 7, 0)
    assert first["average_price"] == 1500.0 and "market protection" in first["status_message"]
    assert sum(t["quantity"] for t in client.order_trades(first["order_id"])) == 3
    assert client.order_history(buy(client, "part2", quantity=2))[-1]["filled_quantity"] == 2  # 3 >= 2: all of it
    fake.partial_fill_next(1, message="IOC cancelled")
    third = client.order_history(buy(client, "part3", quantity=4))[-1]
    assert (third["status"], third["filled_quantity"], third["status_message"]) == ("CANCELLED", 1, "IOC cancelled")
    assert client.order_history(buy(client, "whole", quantity=4))[-1]["status"] == "COMPLETE"  # only the next n


# --- market data -----------------------------------------------------------------------------------------
def test_instruments_csv_parses(fake: FakeKite) -> None:
    raw = requests.get(f"{fake.rest_url}/instruments/NSE", timeout=2)
    assert raw.headers["Content-Type"] == "text/csv" and raw.text.splitlines()[0] == KITE_CSV_HEADER
    nse = {i["tradingsymbol"]: i for i in kite(fake).instruments("NSE")}
    assert nse["INFY"]["instrument_token"] == INFY and nse["INFY"]["lot_size"] == 1
    assert nse["INFY"]["tick_size"] == 0.05 and nse["INFY"]["segment"] == "NSE"
    assert nse["NIFTY 50"]["segment"] == "INDICES"
    assert {i["exchange"] for i in nse.values()} == {"NSE"}
    assert {i["exchange"] for i in kite(fake).instruments()} == {"NSE", "BSE"}


def test_ltp_follows_set_price_and_skips_unknowns(fake: FakeKite) -> None:
    client = kite(fake)
    fake.set_price("NSE", "SBIN", 823.4)
    assert client.ltp("NSE:SBIN", "NSE:NOSUCH") == {"NSE:SBIN": {"instrument_token": SBIN, "last_price": 823.4}}
    assert client.ohlc("NSE:SBIN")["NSE:SBIN"]["ohlc"]["high"] == 823.4
    assert len(client.quote("NSE:SBIN")["NSE:SBIN"]["depth"]["sell"]) == 5


# --- faults ----------------------------------------------------------------------------------------------
def test_stop_then_start_is_an_outage_on_the_same_url(fake: FakeKite) -> None:
    client, url = kite(fake), fake.rest_url
    order_id = buy(client, "before")
    fake.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        client.profile()
    fake.start()
    assert fake.rest_url == url and client.order_history(order_id)[-1]["status"] == "COMPLETE"


@pytest.mark.parametrize(("fault", "exception", "code"), [
    ({"status": 503}, kex.NetworkException, 503),
    ({"status": 429}, kex.NetworkException, 429),
    ({"status": 500}, kex.GeneralException, 500),
    ({"status": 500, "error_type": "OrderException", "message": "Order not placed"}, kex.OrderException, 500),
    ({"status": 400, "error_type": "MarginException", "message": "Insufficient funds"}, kex.GeneralException, 400),
    ({"status": 502, "body": "<html>502 Bad Gateway</html>", "content_type": "text/html"}, kex.DataException, None),
])
def test_fail_next_maps_to_kiteconnect_exceptions(fake: FakeKite, fault: dict, exception: type, code: int | None) -> None:
    client = kite(fake)
    fake.fail_next(1, **fault)
    with pytest.raises(exception) as raised:
        buy(client, "doomed")
    assert type(raised.value) is exception
    if code:
        assert raised.value.code == code
    assert fake.orders == []  # a failed request never landed
    assert client.order_history(buy(client, "fine"))[-1]["status"] == "COMPLETE"  # only the next one failed


def test_fail_next_can_target_a_route(fake: FakeKite) -> None:
    client = kite(fake)
    fake.fail_next(2, status=503, method="GET", path="/quote")
    assert client.profile()  # other routes unaffected
    for _ in range(2):
        with pytest.raises(kex.NetworkException):
            client.ltp("NSE:INFY")
    assert client.ltp("NSE:INFY")["NSE:INFY"]["last_price"]


def test_fail_next_can_fail_order_history_of_any_id_but_not_placement(fake: FakeKite) -> None:
    client = kite(fake)
    fake.fail_next(1, status=500, method="GET", path="/orders/")
    order_id = buy(client, "follow")  # POST /orders/regular is not a GET
    assert client.orders()[0]["order_id"] == order_id  # nor is the list under /orders/
    with pytest.raises(kex.GeneralException) as failed:
        client.order_history(order_id)
    assert type(failed.value) is kex.GeneralException and failed.value.code == 500
    assert client.order_history(order_id)[-1]["status"] == "COMPLETE"  # only the next one


def test_fail_next_can_fail_only_the_order_list(fake: FakeKite) -> None:
    client = kite(fake)
    fake.fail_next(1, status=500, method="GET", path=re.compile("/orders"))
    order_id = buy(client, "listed")
    assert client.order_history(order_id)[-1]["status"] == "COMPLETE"  # /orders/{id} is not the list
    with pytest.raises(kex.GeneralException) as failed:
        client.orders()
    assert failed.value.code == 500
    assert [o["order_id"] for o in client.orders()] == [order_id]


def test_expire_token_gives_token_exception_until_a_new_session(fake: FakeKite) -> None:
    client, old = kite(fake), fake.access_token
    fake.expire_token()
    for call in (client.profile, lambda: buy(client, "late")):
        with pytest.raises(kex.TokenException) as expired:
            call()
        assert expired.value.code == 403
    fresh = KiteConnect(fake.api_key, root=fake.rest_url)
    new = fresh.generate_session(fake.account.request_token, fake.api_secret)["access_token"]
    assert new != old and fresh.profile()["user_id"] == fake.account.user_id
    with pytest.raises(kex.TokenException):
        client.profile()  # the old token stays dead


def test_order_accepted_then_answer_stalls_past_the_client_timeout(fake: FakeKite) -> None:
    slow_client = kite(fake, timeout=0.3)
    fake.time_out_next_order_after_accept(seconds=2.0)  # the fixture's stop() cuts the stall short
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        buy(slow_client, "lost1")
    # It landed: the order is there (and filled) while the stalled answer is still pending.
    landed = [o for o in kite(fake).orders() if o["tag"] == "lost1"]
    assert len(landed) == 1 and landed[0]["status"] == "COMPLETE"
    assert time.monotonic() - started < 1.5


def test_request_stalled_before_processing_never_lands(fake: FakeKite) -> None:
    fake.time_out_next_request(seconds=0.6, method="POST", path="/orders")
    with pytest.raises(requests.exceptions.Timeout):
        buy(kite(fake, timeout=0.3), "never")
    assert fake.orders == [] and kite(fake).orders() == []


def test_more_than_10_orders_in_a_second_get_429(fake: FakeKite) -> None:
    client = kite(fake)
    outcomes: list[object] = []
    for n in range(12):
        try:
            outcomes.append(buy(client, f"burst{n}"))
        except kex.NetworkException as exc:
            outcomes.append(exc.code)
    first_post = fake.order_post_times(fake.api_key)[0]
    assert all(isinstance(o, str) for o in outcomes[:10]) and outcomes[10:] == [429, 429]
    assert len(fake.throttled_times(fake.api_key)) == 2 and len(fake.order_post_times()) == 12
    assert fake.max_rate(fake.api_key) == 10 and len(fake.orders) == 10
    assert sum(fake.requests_per_second(fake.api_key).values()) == 12

    raw = requests.post(f"{fake.rest_url}/orders/regular", timeout=2,
                        headers={"Authorization": f"token {fake.api_key}:{fake.access_token}"},
                        data={"exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY",
                              "quantity": 1, "product": "MIS", "order_type": "MARKET", "market_protection": -1})
    assert raw.status_code == 429 and raw.headers["Content-Type"] == "application/json"
    assert raw.json() == {"status": "error", "error_type": "NetworkException", "message": "Too many requests",
                          "data": None}

    time.sleep(max(0.0, first_post + 1.02 - time.monotonic()))  # the 1 s window slides on
    assert client.order_history(buy(client, "after"))[-1]["status"] == "COMPLETE"


# --- latency ---------------------------------------------------------------------------------------------
def test_latency_holds_every_answer_but_serves_requests_in_parallel(fake: FakeKite) -> None:
    client = kite(fake)
    fake.set_latency(0.25)
    assert 0.25 <= elapsed(client.profile) < 0.6
    fake.fail_next(1, status=500, method="GET", path="/user/profile")

    def refused() -> None:
        with pytest.raises(kex.GeneralException):
            client.profile()
    assert elapsed(refused) >= 0.25  # errors wait too

    # 120 clients at once: served together (one after another would take 30 s).
    clients = [kite(fake) for _ in range(120)]
    with ThreadPoolExecutor(len(clients)) as pool:
        started = time.monotonic()
        profiles = list(pool.map(lambda c: c.profile(), clients))
        took = time.monotonic() - started
    assert len(profiles) == 120 and took < 2.0

    fake.set_latency(0.1, jitter=0.05)
    assert all(0.05 <= elapsed(client.profile) < 0.4 for _ in range(5))
    fake.set_latency(0.0)
    assert elapsed(client.profile) < 0.1


def test_answers_do_not_wait_out_delayed_ack(fake: FakeKite) -> None:
    assert _Handler.disable_nagle_algorithm is True
    client = kite(fake)
    client.profile()  # the kept-alive connection is open
    # Each answer stalling ~44 ms on delayed ACK would take over 1.7 s here.
    assert elapsed(lambda: [client.profile() for _ in range(40)]) < 0.8


# --- postbacks -------------------------------------------------------------------------------------------
class _PostbackReceiver(BaseHTTPRequestHandler):
    """The app's postback endpoint, as small as it gets."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "_PostbackServer"

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.put((self.headers["Content-Type"], json.loads(body), time.monotonic()))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _PostbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _PostbackReceiver)
        self.received: queue.Queue[tuple[str, dict, float]] = queue.Queue()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/kite/postback"

    def next(self, timeout: float = 5.0) -> dict:
        content_type, payload, _ = self.received.get(timeout=timeout)
        assert content_type == "application/json"
        return payload


@pytest.fixture
def receiver() -> Iterator[_PostbackServer]:
    server = _PostbackServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_buy_posts_complete_with_a_checksum_that_verifies(fake: FakeKite, receiver: _PostbackServer) -> None:
    client = kite(fake)
    fake.set_postback_url(receiver.url)
    fake.set_price("NSE", "INFY", 1601.1)
    order_id = buy(client, "pb1", quantity=2, algo_id="ALGO42")
    payload = receiver.next()
    assert set(payload) == POSTBACK_FIELDS
    assert (payload["status"], payload["order_id"], payload["tag"]) == ("COMPLETE", order_id, "pb1")
    assert (payload["filled_quantity"], payload["unfilled_quantity"], payload["average_price"]) == (2, 0, 1601.1)
    assert payload["user_id"] == fake.account.user_id and payload["market_protection"] == -1
    expected = hashlib.sha256((order_id + payload["order_timestamp"] + fake.api_secret).encode()).hexdigest()
    assert payload["checksum"] == expected
    assert fake.wait_for_postbacks(1) and fake.postbacks == [(payload, 200)]

    fake.reject_next_order("RMS: blocked")
    rejected_id = buy(client, "pb2")
    rejected = receiver.next()
    assert (rejected["order_id"], rejected["status"], rejected["status_message"]) == \
        (rejected_id, "REJECTED", "RMS: blocked")


def test_partial_fill_then_cancel_posts_update_then_cancelled(receiver: _PostbackServer) -> None:
    with FakeKite(fill_delay=0.3, postback_url=receiver.url) as fake:
        client = kite(fake)
        fake.set_price("NSE", "SBIN", 820.0)
        fake.partial_fill_next(3)
        order_id = buy(client, "pb3", symbol="SBIN", quantity=10)
        assert client.order_history(order_id)[-1]["status"] == "OPEN"  # fill_delay: nothing posted yet
        update, cancelled = receiver.next(), receiver.next()
        assert (update["order_id"], update["status"], update["filled_quantity"], update["pending_quantity"]) == \
            (order_id, "UPDATE", 3, 7)
        assert (cancelled["order_id"], cancelled["status"], cancelled["filled_quantity"],
                cancelled["cancelled_quantity"], cancelled["pending_quantity"]) == (order_id, "CANCELLED", 3, 7, 0)
        assert cancelled["average_price"] == 820.0 and cancelled["status_message"]
        assert fake.wait_for_postbacks(2) and [outcome for _, outcome in fake.postbacks] == [200, 200]

        # A modification posts UPDATE too (Kite's word for it); the fill then posts COMPLETE.
        fake.auto_fill = False
        held = buy(client, "pb4", symbol="SBIN", quantity=2)
        client.modify_order(KiteConnect.VARIETY_REGULAR, held, quantity=3)
        modified = receiver.next()
        assert (modified["order_id"], modified["status"], modified["quantity"]) == (held, "UPDATE", 3)
        fake.fill_order(held)
        assert receiver.next()["status"] == "COMPLETE"


def test_drop_postbacks_drops_the_next_ones(fake: FakeKite, receiver: _PostbackServer) -> None:
    client = kite(fake)
    fake.set_postback_url(receiver.url)
    fake.drop_postbacks(1)
    lost, delivered = buy(client, "lost"), buy(client, "kept")
    assert receiver.next()["order_id"] == delivered
    assert fake.wait_for_postbacks(2)
    assert [(p["order_id"], outcome) for p, outcome in fake.postbacks] == [(lost, "dropped"), (delivered, 200)]
    assert receiver.received.empty()


def test_postbacks_never_hold_the_answer_and_failures_are_recorded(receiver: _PostbackServer) -> None:
    with FakeKite(postback_url=receiver.url, postback_delay=0.4) as fake:
        client = kite(fake)
        started = time.monotonic()
        order_id = buy(client, "later")
        assert time.monotonic() - started < 0.3
        _, payload, arrived = receiver.received.get(timeout=5)
        assert payload["order_id"] == order_id and arrived - started >= 0.4

        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            nobody = f"http://127.0.0.1:{probe.getsockname()[1]}/postback"
        fake.postback_delay = 0.0
        fake.set_postback_url(nobody)
        buy(client, "unheard")
        assert fake.wait_for_postbacks(2)
        assert "ConnectionRefused" in str(fake.postbacks[-1][1])
TICKER_CLIENT = textwrap.dedent("""
    import json, sys
    from kiteconnect import KiteTicker
    from twisted.internet import reactor

    api_key, access_token, root = sys.argv[1:4]

    def out(**fields):
        print(json.dumps(fields, default=str), flush=True)

    def on_connect(ws, response):
        out(event="connect")
        ws.subscribe([{INFY}, {RELIANCE}, {SBIN}, {NIFTY}, 99999999])  # quote mode by default
        ws.set_mode(ws.MODE_LTP, [{INFY}])
        ws.set_mode(ws.MODE_FULL, [{SBIN}])

    kws = KiteTicker(api_key, access_token, root=root)
    kws.on_connect = on_connect
    kws.on_ticks = lambda ws, ticks: out(event="ticks", ticks=ticks)
    kws.on_message = lambda ws, payload, binary: out(event="heartbeat") if binary and len(payload) == 1 else None
    kws.on_order_update = lambda ws, data: out(event="order", data=data)
    kws.on_close = lambda ws, code, reason: out(event="close", code=code)
    kws.connect(threaded=True)
    kws.factory.initialDelay = kws.factory.delay = 0.1  # reconnect fast: the test is about the fake

    bad = KiteTicker(api_key, "not-a-token", root=root)
    bad.on_connect = lambda ws, response: out(event="bad_connect")
    def bad_close(ws, code, reason):
        ws.stop_retry()
        out(event="bad_close", code=code, reason=str(reason))
    bad.on_close = bad_close
    reactor.callFromThread(bad.connect)

    sys.stdin.read()  # until the test closes our stdin
""").replace("{INFY}", str(INFY)).replace("{RELIANCE}", str(RELIANCE)).replace("{SBIN}", str(SBIN)) \
    .replace("{NIFTY}", str(NIFTY))


class Lines:
    """A subprocess's JSON lines, consumed in order."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.queue: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            try:
                self.queue.put(json.loads(line))
            except ValueError:
                pass

    def seen_or_expect(self, predicate: Callable[[dict], bool], timeout: float = 5.0) -> dict:
        """An event already consumed, or the next matching one."""
        return next((e for e in self.seen if predicate(e)), None) or self.expect(predicate, timeout)

    def expect(self, predicate: Callable[[dict], bool], timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"no matching event; saw {self.seen[-10:]}")


def tick_for(token: int, price: float, mode: str) -> Callable[[dict], bool]:
    return lambda e: e["event"] == "ticks" and any(
        t["instrument_token"] == token and t["last_price"] == price and t["mode"] == mode for t in e["ticks"])


def the_tick(event: dict, token: int) -> dict:
    return next(t for t in event["ticks"] if t["instrument_token"] == token)


def test_kite_ticker_connects_subscribes_and_receives_ticks(fake: FakeKite) -> None:
    proc = subprocess.Popen([sys.executable, "-c", TICKER_CLIENT, fake.api_key, fake.access_token, fake.ws_url],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        lines = Lines(proc)
        lines.expect(lambda e: e["event"] == "connect")
        assert fake.wait_for_subscription(SBIN, mode="full") and fake.wait_for_subscription(INFY, mode="ltp")
        assert fake.subscriptions()[0][99999999] == "quote"  # unknown token: kept, never ticks

        fake.tick("NSE:INFY", 1600.55)
        ltp = the_tick(lines.expect(tick_for(INFY, 1600.55, "ltp")), INFY)
        assert set(ltp) == {"tradable", "mode", "instrument_token", "last_price"}

        fake.tick(("NSE", "RELIANCE"), 2999.95, quantity=25, close=2950.0)
        quote = the_tick(lines.expect(tick_for(RELIANCE, 2999.95, "quote")), RELIANCE)
        assert quote["last_traded_quantity"] == 25 and quote["ohlc"]["close"] == 2950.0
        assert quote["ohlc"]["high"] == 2999.95 and quote["volume_traded"] > 0 and quote["tradable"] is True

        fake.tick(SBIN, 815.05)
        full = the_tick(lines.expect(tick_for(SBIN, 815.05, "full")), SBIN)
        assert len(full["depth"]["buy"]) == len(full["depth"]["sell"]) == 5 and full["exchange_timestamp"]

        fake.tick(NIFTY, 24612.5)
        index = the_tick(lines.expect(tick_for(NIFTY, 24612.5, "quote")), NIFTY)
        assert index["tradable"] is False and index["ohlc"]["high"] == 24612.5

        buy(kite(fake), "wsorder", symbol="SBIN")
        update = lines.expect(lambda e: e["event"] == "order" and e["data"]["status"] == "COMPLETE")
        assert update["data"]["tag"] == "wsorder" and update["data"]["average_price"] == 815.05

        lines.seen_or_expect(lambda e: e["event"] == "heartbeat", timeout=2.5)
        bad = lines.seen_or_expect(lambda e: e["event"] == "bad_close")
        assert "403" in bad["reason"] and not any(e["event"] == "bad_connect" for e in lines.seen)

        # A dropped link: KiteTicker reconnects and resubscribes; ticks flow again.
        assert fake.drop_ticker_connections() == 1
        lines.expect(lambda e: e["event"] == "close")
        lines.expect(lambda e: e["event"] == "connect")
        assert fake.wait_for_subscription(INFY, mode="ltp")
        fake.tick("NSE:INFY", 1588.0)
        lines.expect(tick_for(INFY, 1588.0, "ltp"))
        assert fake.ticker_connection_count(fake.api_key) == 1
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- as a process ----------------------------------------------------------------------------------------
def test_runs_as_a_process_and_prints_its_urls() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_kite", "--port", "0", "--ws-port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = [proc.stdout.readline() for _ in range(4)]  # type: ignore[union-attr]
        env = dict(pair.split("=", 1) for pair in banner[2].split())
        creds = dict(pair.split("=", 1) for pair in banner[3].split())
        assert env["KITE_TICKER_ROOT"].startswith("ws://127.0.0.1:")
        client = KiteConnect(creds["api_key"], access_token=creds["access_token"], root=env["KITE_API_ROOT"])
        assert client.profile()["user_id"] == creds["user_id"]
    finally:
        proc.terminate()
        proc.wait(timeout=5)
