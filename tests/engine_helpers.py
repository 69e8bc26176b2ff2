"""Helpers for tests that run the engine's real processes."""
from __future__ import annotations

import json
import math
from datetime import timedelta

import redis

from tests.conftest import wait_for
from tests.helpers import PAPER_CREDENTIALS, api_register, api_strategy
from webapp import clock, keys, redis_client
from webapp.engine.events import Event, order_tag
from webapp.engine import dispatch
from webapp.extensions import db
from webapp.market_calendar import IST
from webapp.models import Strategy


def seconds_ahead(seconds: float) -> str:
    """An IST HH:MM:SS at least `seconds` from now on the system clock."""
    moment = clock.now() + timedelta(seconds=seconds)
    whole = moment.replace(microsecond=0) + timedelta(seconds=math.ceil(moment.microsecond / 1e6))
    return whole.astimezone(IST).strftime("%H:%M:%S")


def trader(client, email: str) -> dict:  # type: ignore[no-untyped-def]
    headers = api_register(client, email)
    assert client.post("/api/v1/broker/connect", json=PAPER_CREDENTIALS, headers=headers).status_code == 200
    return headers


def started_strategy(client, headers: dict, buy_in: float, sell_in: float, **changes: object) -> int:  # type: ignore[no-untyped-def]
    sid = api_strategy(client, headers, buy_time=seconds_ahead(buy_in), sell_time=seconds_ahead(sell_in), **changes)
    start(client, headers, sid)
    return sid


def start(client, headers: dict, sid: int) -> int:  # type: ignore[no-untyped-def]
    """START through the API; returns the new run's id (what run_event builds event ids from)."""
    response = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert response.status_code == 200, response.json
    with client.application.app_context():
        _RUNS[sid] = db.session.get(Strategy, sid).run_id
        db.session.remove()
    return _RUNS[sid]


_RUNS: dict[int, int] = {}  # strategy id → its latest run, as started by these helpers


def status(client, headers: dict, sid: int) -> dict:  # type: ignore[no-untyped-def]
    return client.get(f"/api/v1/strategy/status/{sid}", headers=headers).json


def wait_status(client, headers: dict, sid: int, wanted: str, timeout: float = 20) -> dict:  # type: ignore[no-untyped-def]
    return wait_for(lambda: (s := status(client, headers, sid))["status"] == wanted and s,
                    timeout, what=f"strategy {sid} to be {wanted}")


def orders(client, headers: dict, sid: int) -> list[dict]:  # type: ignore[no-untyped-def]
    return client.get(f"/api/v1/strategy/{sid}/orders", headers=headers).json["orders"]


def run_event(kind: str, sid: int) -> Event:
    """The event of this kind for the strategy's latest run started through start()."""
    return Event.for_run(kind, sid, _RUNS[sid])


def send(app, event: Event) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        dispatch.enqueue(redis_client.current(), [event])


def broker_orders(conn: redis.Redis, event_id: str) -> int:
    """Orders the (paper) exchange holds for an event's tag: the broker's side of the truth."""
    tag = order_tag(event_id)
    return sum(conn.llen(key) for key in conn.scan_iter(keys.paper_tag("*", tag)))  # type: ignore[arg-type]


def inject_faults(conn: redis.Redis, *faults: str) -> None:
    conn.rpush(keys.paper_faults(), *faults)


def log_entries(processes, name: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """A process's JSON log lines (a traceback's or RQ's own plain-text lines are skipped)."""
    entries = []
    for line in processes.log(name).splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def csv_feed(tmp_path, name: str, rows: list[tuple[float, str, float]]) -> str:  # type: ignore[no-untyped-def]
    """A FEED setting that replays these (offset seconds, symbol, price) ticks from the listener's start."""
    path = tmp_path / f"{name}.csv"
    path.write_text("offset_seconds,symbol,price\n" + "".join(f"{o},{s},{p}\n" for o, s, p in rows))
    return f"csv:{path}"
