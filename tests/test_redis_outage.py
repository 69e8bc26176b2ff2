"""Redis goes away and comes back empty (this machine's Redis keeps nothing on disk), with real worker,
scheduler and listener processes: every process rides it out, the web says "engine unavailable"
instead of failing, and afterwards strategies are recovered and trade; nothing is lost or doubled. The
worker survives Redis going away at any moment, mid-job included."""
from __future__ import annotations

import time

import pytest
from rq import Queue, Worker

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
    held = started_strategy(client, headers, buy_in=3, sell_in=60, name="held")
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
    after = started_strategy(client, headers, buy_in=2, sell_in=60, name="after", symbol="SBIN", stop_loss="780")
    wait_status(client, headers, after, "in_position", timeout=20)
    for sid in (held, waiting, after):
        assert [(o["event"], o["status"]) for o in orders(client, headers, sid)] == [("BUY", "COMPLETE")]
    assert all(proc.poll() is None for proc in processes.running.values())
    assert '"event": "redis_unavailable"' in processes.log("scheduler")
    assert '"event": "redis_unavailable"' in processes.log("listener")


def test_the_worker_survives_redis_going_away_while_it_runs_a_job(processes, redis_conn, private_redis, tmp_path):
    """The moment that used to end the process: RQ's loop retries Redis errors only while it waits for a job,
    so Redis vanishing during a job made it quit when the job ended, and its teardown failed too."""
    release = tmp_path / "release"
    worker = processes.start("worker", "jobs.worker")
    wait_for(lambda: Worker.count(connection=redis_conn) == 1, what="the worker to register")
    orders_queue = Queue("orders", connection=redis_conn)
    job = orders_queue.enqueue("subprocess.call", ["sh", "-c", f"until [ -e {release} ]; do sleep 0.05; done"])
    wait_for(lambda: job.get_status(refresh=True) == "started", what="the job to run")

    redis_server.stop(private_redis["proc"])
    release.touch()  # the job ends while Redis is away
    wait_for(lambda: '"event": "worker_loop_restart"' in processes.log("worker"), what="the worker to restart its loop")
    assert worker.poll() is None

    private_redis["proc"] = redis_server.start(private_redis["port"], private_redis["dir"])  # back, and empty
    wait_for(lambda: Worker.count(connection=redis_conn) == 1, timeout=30, what="the worker to register again")
    probe = orders_queue.enqueue("os.getpid")
    wait_for(lambda: probe.get_status(refresh=True) == "finished", timeout=30, what="a job after the outage")
    assert probe.return_value() == worker.pid and worker.poll() is None
