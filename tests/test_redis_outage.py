"""Redis goes away and comes back empty (this machine's Redis keeps nothing on disk), with real worker,
scheduler and listener processes: every process rides it out, the web says "engine unavailable"
instead of failing, and afterwards strategies are recovered and trade; nothing is lost or doubled."""
from __future__ import annotations

import time

import pytest

from jobs import redis_server
from tests.conftest import wait_for
from tests.engine_helpers import orders, started_strategy, trader, wait_status
from tests.helpers import PASSWORD, csrf_token
from webapp import keys

pytestmark = pytest.mark.slow


@pytest.fixture
def private_redis(tmp_path):  # type: ignore[no-untyped-def]
    """A Redis of this test's own, since the test stops it."""
    server = {"port": redis_server.free_port(), "dir": tmp_path / "redis"}
    server["proc"] = redis_server.start(server["port"], server["dir"])
    yield server
    redis_server.stop(server["proc"])


@pytest.fixture
def redis_url(private_redis) -> str:  # type: ignore[no-untyped-def]
    return f"redis://127.0.0.1:{private_redis['port']}/0"


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


def test_every_process_rides_out_a_redis_outage_and_the_web_says_so(client, processes, redis_conn, private_redis,
                                                                    tmp_path):
    quiet = tmp_path / "quiet.csv"
    quiet.write_text("offset_seconds,symbol,price\n")
    processes.env = {**processes.env, "RECONCILE_SECONDS": "1", "FEED": f"csv:{quiet}"}
    for name in ("worker", "scheduler", "listener"):
        processes.start(name, f"jobs.{name}")
    headers = trader(client, "outage@example.com")
    token = csrf_token(client, "/login")
    client.post("/login", data={"email": "outage@example.com", "password": PASSWORD, "csrf_token": token})
    held = started_strategy(client, headers, buy_in=1, sell_in=60, name="held")
    wait_status(client, headers, held, "in_position")
    waiting = started_strategy(client, headers, buy_in=14, sell_in=60, name="waiting", symbol="TCS")
    wait_for(lambda: redis_conn.sismember(keys.LISTENER_SUBSCRIBED, "NSE:INFY"), what="listener watching INFY")

    redis_server.stop(private_redis["proc"])
    api = client.get(f"/api/v1/strategy/status/{held}", headers=headers)
    assert api.status_code == 503 and api.json["error"] == "ENGINE_UNAVAILABLE"
    assert client.post(f"/api/v1/strategy/{waiting}/stop", headers=headers).status_code == 503
    page = client.get("/strategies")
    assert page.status_code == 200
    assert 'id="engine-unavailable"' in page.get_data(as_text=True) and "held" in page.get_data(as_text=True)
    time.sleep(4)  # the processes back off and retry meanwhile
    assert {name: proc.poll() for name, proc in processes.running.items()} == {
        "worker": None, "scheduler": None, "listener": None}

    private_redis["proc"] = redis_server.start(private_redis["port"], private_redis["dir"])  # back, and empty
    wait_for(lambda: redis_conn.exists(keys.strategy(held), keys.strategy(waiting)) == 2, timeout=20,
             what="recovery to rebuild both strategies")
    wait_for(lambda: redis_conn.sismember(keys.LISTENER_SUBSCRIBED, "NSE:INFY"), timeout=20,
             what="the listener to resubscribe the held position's symbol")
    wait_status(client, headers, waiting, "in_position", timeout=30)
    after = started_strategy(client, headers, buy_in=2, sell_in=60, name="after", symbol="SBIN")
    wait_status(client, headers, after, "in_position", timeout=20)
    for sid in (held, waiting, after):
        assert [(o["event"], o["status"]) for o in orders(client, headers, sid)] == [("BUY", "COMPLETE")]
    assert all(proc.poll() is None for proc in processes.running.values())
    assert '"event": "redis_unavailable"' in processes.log("scheduler")
    assert '"event": "redis_unavailable"' in processes.log("listener")
