"""Runs (issue 12, part 5): each START is a run with its own id in every event id and order tag, so nothing
of an earlier run can act on a later one; a run that ended with a flagged position blocks START until a
human acknowledges it."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import wait_for
from tests.engine_helpers import (
    broker_orders,
    inject_faults,
    orders,
    run_event,
    seconds_ahead,
    send,
    start,
    started_strategy,
    status,
    trader,
    wait_status,
)
from tests.helpers import api_strategy
from webapp.engine.events import BUY, STOP
from webapp.extensions import db
from webapp.models import AuditEvent, Run, Strategy

pytestmark = pytest.mark.slow


def test_a_same_day_restart_after_a_rejected_buy_is_a_new_run_that_buys(client, engine, redis_conn, app):
    headers = trader(client, "rerun@example.com")
    inject_faults(redis_conn, "reject")
    sid = started_strategy(client, headers, buy_in=1, sell_in=120)
    first_buy, first_stop = run_event(BUY, sid), run_event(STOP, sid)
    failed = wait_status(client, headers, sid, "failed")
    assert "BUY rejected" in failed["status_reason"] and failed["position"] == 0

    with app.app_context():  # the trader moves the buy time a little later and starts again, the same day
        db.session.get(Strategy, sid).buy_time = seconds_ahead(2)
        db.session.commit()
    second_run = start(client, headers, sid)
    send(app, first_stop)  # a STOP of the first run, resent late, must not stop the second
    held = wait_status(client, headers, sid, "in_position")
    assert held["position"] == 10
    assert broker_orders(redis_conn, run_event(BUY, sid).event_id) == 1
    assert broker_orders(redis_conn, first_buy.event_id) == 1  # the rejected one, on the broker's side
    assert run_event(BUY, sid).tag != first_buy.tag and len(run_event(BUY, sid).tag) <= 20
    rows = orders(client, headers, sid)
    assert [(o["event_id"], o["status"]) for o in rows] == [(first_buy.event_id, "REJECTED"),
                                                             (run_event(BUY, sid).event_id, "COMPLETE")]
    wait_for(lambda: "an earlier run's event dropped" in engine.log("worker"), what="the stray STOP dropped")
    assert status(client, headers, sid)["status"] == "in_position"
    with app.app_context():
        runs = db.session.scalars(select(Run.id).where(Run.strategy_id == sid).order_by(Run.id)).all()
    assert len(runs) == 2 and runs[-1] == second_run


def test_start_is_refused_while_a_failed_run_holds_a_flagged_position_until_acknowledged(client, app):
    headers = trader(client, "ack@example.com")
    sid = api_strategy(client, headers, buy_time="09:20:00", sell_time="15:00:00")
    with app.app_context():
        strategy = db.session.get(Strategy, sid)
        strategy.status, strategy.position, strategy.needs_attention = "failed", 7, True
        strategy.status_reason = "exit failed, position of 7 still open"
        db.session.commit()

    refused = client.post(f"/api/v1/strategy/{sid}/start", headers=headers)
    assert refused.status_code == 409 and "acknowledge" in refused.json["message"]
    with app.app_context():
        assert db.session.get(Strategy, sid).position == 7  # nothing erased

    done = client.post(f"/api/v1/strategy/{sid}/acknowledge", headers=headers)
    assert done.status_code == 200 and "position of 7" in done.json["message"]
    again = client.post(f"/api/v1/strategy/{sid}/acknowledge", headers=headers)
    assert again.status_code == 409
    with app.app_context():
        strategy = db.session.get(Strategy, sid)
        assert (strategy.needs_attention, strategy.position) == (False, 0)
        audit = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "position_acknowledged")).one()
        assert audit.strategy_id == sid and audit.detail["position"] == 7 and audit.actor_user_id is not None
