"""Invariant 4: one tenant never reaches another's data. Every route that takes an id is tried by user B
on user A's resources, and must answer 404 and change nothing. The matrix is read from the URL map, so a
new route that takes an id is covered without anyone remembering to add it."""
from __future__ import annotations

import pytest

from tests.helpers import PAPER_CREDENTIALS, STRATEGY, api_register, api_strategy, browser_login, csrf_token, db_row
from webapp.models import Strategy

ID_ARGS = {"strategy_id"}


def id_routes(app) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    routes = []
    for rule in app.url_map.iter_rules():
        if ID_ARGS & set(rule.arguments):
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                routes.append((rule.rule, method, rule.endpoint))
    return routes


def test_the_matrix_is_not_empty(app):
    endpoints = {endpoint for _, _, endpoint in id_routes(app)}
    assert {"strategies.detail", "strategies.edit", "strategies.delete", "api.strategy_get",
            "api.strategy_update", "api.strategy_delete"} <= endpoints


def test_user_b_gets_404_on_every_route_for_user_a_resources(app):
    owner = app.test_client()
    a_headers = api_register(owner, "a@example.com")
    owner.post("/api/v1/broker/connect", json=PAPER_CREDENTIALS, headers=a_headers)
    sid = api_strategy(owner, a_headers)
    before = db_row(app, Strategy, sid)

    intruder = app.test_client()
    browser_login(intruder, "b@example.com")  # B has a session cookie ...
    b_headers = api_register(app.test_client(), "b2@example.com")  # ... and another tenant has a token
    token = csrf_token(intruder, "/strategies")
    body = {**STRATEGY, "name": "hijacked", "quantity": 1}

    checked = []
    for rule, method, endpoint in id_routes(app):
        url = rule.replace("<int:strategy_id>", str(sid))
        if url.startswith("/api/"):
            response = intruder.open(url, method=method, json=body, headers=b_headers)
        else:
            response = intruder.open(url, method=method, data={**body, "csrf_token": token})
        assert response.status_code == 404, (method, url, response.status_code)
        checked.append((method, url))
    assert len(checked) >= 7

    assert db_row(app, Strategy, sid) == before
    # Nor do lists leak: B sees none of A's strategies or broker account.
    assert intruder.get("/api/v1/strategies", headers=b_headers).json == {"strategies": []}
    assert intruder.get("/api/v1/broker", headers=b_headers).json == {"account": None}
    assert STRATEGY["name"] not in intruder.get("/strategies").get_data(as_text=True)


@pytest.mark.parametrize("missing_id", [0, 999999])
def test_missing_ids_look_exactly_like_other_tenants_ids(client, missing_id):
    headers = api_register(client, "m@example.com")
    response = client.get(f"/api/v1/strategy/{missing_id}", headers=headers)
    assert response.status_code == 404 and response.json == {"error": "NOT_FOUND", "message": "Not found."}


class TestRunningStrategies:
    """A running strategy's status is answered from Redis without the database: the owner check there
    must hold as well as the database's."""

    @pytest.fixture
    def app_overrides(self) -> dict:
        return {"TRADING_CALENDAR": "always"}

    def test_another_tenant_gets_404_for_a_running_strategy_and_the_owner_gets_it_live(self, app):
        owner = app.test_client()
        a_headers = api_register(owner, "run-a@example.com")
        owner.post("/api/v1/broker/connect", json=PAPER_CREDENTIALS, headers=a_headers)
        sid = api_strategy(owner, a_headers, buy_time="23:59:58", sell_time="23:59:59")
        assert owner.post(f"/api/v1/strategy/{sid}/start", headers=a_headers).status_code == 200
        mine = owner.get(f"/api/v1/strategy/status/{sid}", headers=a_headers)
        assert mine.status_code == 200 and mine.json["source"] == "runtime"
        assert mine.json["status"] == "waiting_entry"

        intruder = app.test_client()
        b_headers = api_register(intruder, "run-b@example.com")
        assert intruder.get(f"/api/v1/strategy/status/{sid}", headers=b_headers).status_code == 404
        browser_login(intruder, "run-c@example.com")
        assert intruder.get(f"/api/v1/strategy/status/{sid}").status_code == 404
