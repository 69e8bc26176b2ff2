"""The fake Kite (tests/fake_kite) proven through the REAL kiteconnect clients: every route the app uses, each
fault control mapped to the exception kiteconnect raises, Kite's 10 orders/s limit, and KiteTicker ticks."""
from __future__ import annotations

import hashlib
import json
import queue
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kex

from tests.fake_kite import FakeKite

ROOT = Path(__file__).resolve().parent.parent
KITE_CSV_HEADER = ("instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,lot_size,"
                   "instrument_type,segment,exchange")
INFY, RELIANCE, SBIN, NIFTY = 408065, 738561, 779521, 256265


@pytest.fixture
def fake():  # type: ignore[no-untyped-def]
    with FakeKite(stall_seconds=1.0) as running:
        yield running


def kite(fake: FakeKite, **kwargs: Any) -> KiteConnect:
    return KiteConnect(fake.api_key, access_token=fake.access_token, root=fake.rest_url, **kwargs)


def buy(client: KiteConnect, tag: str, symbol: str = "INFY", quantity: int = 1, **kwargs: Any) -> str:
    return client.place_order(variety=KiteConnect.VARIETY_REGULAR, exchange="NSE", tradingsymbol=symbol,
                              transaction_type="BUY", quantity=quantity, product="MIS",
                              order_type=kwargs.pop("order_type", "MARKET"), tag=tag, **kwargs)


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
                              "quantity": 1, "product": "MIS", "order_type": "MARKET"})
    assert raw.status_code == 429 and raw.headers["Content-Type"] == "application/json"
    assert raw.json() == {"status": "error", "error_type": "NetworkException", "message": "Too many requests",
                          "data": None}

    time.sleep(max(0.0, first_post + 1.02 - time.monotonic()))  # the 1 s window slides on
    assert client.order_history(buy(client, "after"))[-1]["status"] == "COMPLETE"


# --- ticker ----------------------------------------------------------------------------------------------
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
