"""Keeps webapp/api/openapi.py true: every /api/v1 route is in the spec (and nothing else is), the spec is
a valid OpenAPI 3.0 document, and a property-based run (schemathesis) checks real responses against it:
no 5xx, only documented status codes, the documented content type, bodies that match the schemas."""
from __future__ import annotations

import copy
import os
import re
from decimal import Decimal
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import PAPER_CREDENTIALS, api_register, api_strategy
from webapp import clock, redis_client
from webapp.api.openapi import SPEC
from webapp.engine import runtime
from webapp.engine.events import BUY, Event
from webapp.extensions import db
from webapp.market_calendar import exchange_date
from webapp.models import OrderLog, Run, Strategy
from webapp.state_machine import Status

API_PREFIX = "/api/v1"
SPEC_URL = f"{API_PREFIX}/openapi.json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
IGNORED_METHODS = {"HEAD", "OPTIONS"}  # Flask adds these to every rule
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Per operation, for the fuzzing phase (the examples and coverage phases add a few dozen fixed cases each).
# Raise it for a longer hunt: OPENAPI_MAX_EXAMPLES=500 pytest tests/test_openapi.py
MAX_EXAMPLES = int(os.environ.get("OPENAPI_MAX_EXAMPLES", "40"))
SQLITE_MAX_INT = 2**63 - 1


def _spec_operations() -> set[tuple[str, str]]:
    return {(path, method) for path, item in SPEC["paths"].items() for method in item if method in HTTP_METHODS}


# --- One app for the whole module. Hypothesis runs many examples inside one test call, and it rejects
# --- function-scoped fixtures there; state carries over between examples anyway, as in production.


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory, redis_url: str):  # type: ignore[no-untyped-def]
    from tests.conftest import make_app

    path: Path = tmp_path_factory.mktemp("openapi") / "api.sqlite3"
    app = make_app(f"sqlite:///{path}", redis_url)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def bearer(api_app) -> dict:  # type: ignore[no-untyped-def]
    """Headers for a freshly registered user with a connected (paper) broker and a few strategies, one
    of them holding a position, so generated ids (hypothesis favours small integers) reach real rows,
    missing rows and a running strategy (409), and GET /broker describes a real account."""
    client = api_app.test_client()
    headers = api_register(client, "openapi-fuzz@example.com")
    assert client.post(f"{API_PREFIX}/broker/connect", json=PAPER_CREDENTIALS, headers=headers).status_code == 200
    ids = [api_strategy(client, headers, name=f"Fuzz target {n}") for n in range(4)]
    _put_in_position(api_app, ids[0])
    return headers


def _put_in_position(app, strategy_id: int) -> None:  # type: ignore[no-untyped-def]
    """As the engine leaves a strategy after its BUY filled: a filled order row and live runtime state, so
    the status (source "runtime", with P&L) and orders responses are checked with real content."""
    with app.app_context():
        strategy = db.session.get(Strategy, strategy_id)
        run_date = exchange_date(clock.now())
        run = Run(strategy_id=strategy_id, run_date=run_date.isoformat())
        db.session.add(run)
        db.session.flush()
        event = Event.for_run(BUY, strategy_id, run.id)
        strategy.status, strategy.position, strategy.run_date = Status.IN_POSITION.value, 10, run_date.isoformat()
        strategy.run_id = run.id
        strategy.entry_price, strategy.last_action = Decimal("1450.25"), "BUY"
        db.session.add(OrderLog(strategy_id=strategy_id, user_id=strategy.user_id, event=BUY, event_id=event.event_id,
                                side="BUY", quantity=10, price=Decimal("1450.25"), broker_order_id="PAPER-1",
                                tag=event.tag, status="COMPLETE"))
        db.session.commit()
        runtime.activate(redis_client.current(), strategy)
        runtime.update(redis_client.current(), strategy, last_price="1461.70")


# --- 1. The routes and the spec describe the same operations.


def _openapi_path(rule: str) -> str:
    """Flask's `/strategy/<int:strategy_id>` -> OpenAPI's `/strategy/{strategy_id}`."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def test_every_api_route_is_in_the_spec_and_nothing_else(api_app) -> None:  # type: ignore[no-untyped-def]
    routes = {
        (_openapi_path(rule.rule), method.lower())
        for rule in api_app.url_map.iter_rules()
        if rule.rule == API_PREFIX or rule.rule.startswith(API_PREFIX + "/")
        for method in rule.methods - IGNORED_METHODS
    }
    assert routes, "no /api/v1 routes found: is the API blueprint registered?"
    assert routes - _spec_operations() == set(), "routes missing from webapp/api/openapi.py"
    assert _spec_operations() - routes == set(), "operations in webapp/api/openapi.py with no route behind them"


def test_route_to_path_conversion() -> None:
    assert _openapi_path("/api/v1/strategy/<int:strategy_id>") == "/api/v1/strategy/{strategy_id}"
    assert _openapi_path("/api/v1/a/<name>/b/<path:rest>") == "/api/v1/a/{name}/b/{rest}"
    assert _openapi_path("/api/v1/s/<int(max=9223372036854775807):strategy_id>") == "/api/v1/s/{strategy_id}"


# --- 2. The spec is a valid OpenAPI document, and it is what the app serves.


def test_spec_is_a_valid_openapi_document(api_app) -> None:  # type: ignore[no-untyped-def]
    assert re.fullmatch(r"3\.0\.\d+", SPEC["openapi"])
    served = api_app.test_client().get(SPEC_URL)
    assert served.status_code == 200
    assert served.json == SPEC
    # Loads what the app serves, then checks it against the official OpenAPI 3.0 meta-schema; the error
    # names the offending location (e.g. `"const"` or `"type": [...]`, which are 3.1-only).
    loaded = schemathesis.openapi.from_wsgi(SPEC_URL, api_app)
    loaded.validate()
    # Every operation resolves (refs, parameters, bodies); schemathesis skips the document's own URL.
    operations = {(op.path, op.method.lower()) for op in (r.ok() for r in loaded.get_all_operations())}
    assert operations == _spec_operations() - {(SPEC_URL, "get")}


# --- 3. Property-based: real responses match the spec, for every operation.
# The schema is built from SPEC at import (pytest parametrizes at collection) and each case goes to the
# module's app through WSGI. (schemathesis.pytest.from_fixture would load it from a fixture instead, but
# the lazy loader of schemathesis 4.32.5 reads `node._nodeid`, which pytest 9 no longer has.)
schema = schemathesis.openapi.from_dict(copy.deepcopy(SPEC))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_spec(case, api_app, bearer) -> None:  # type: ignore[no-untyped-def]
    # The generated Authorization header (random or missing in negative cases) is replaced by a real
    # token, except where a coverage case deliberately drops it (-> 401, documented).
    case.call_and_validate(app=api_app, headers=bearer, checks=CHECKS)


# --- Hand-picked inputs the generator (almost) never makes: the same four checks, on a fresh app.
# Each of these once found a real bug (a 500): huge ids, Unicode digits, lone surrogates, NUL in a name.

strict_schema = schemathesis.openapi.from_dict(copy.deepcopy(SPEC))
STRATEGY_BODY = {"name": "Hand picked", "symbol": "INFY", "quantity": 1, "buy_time": "09:20",
                 "sell_time": "15:00", "stop_loss": "10"}


@pytest.mark.parametrize(("method", "path", "path_parameters", "body", "auth"), [
    pytest.param("GET", "/api/v1/strategy/{strategy_id}", {"strategy_id": 2**63}, None, True, id="get-id-2**63"),
    pytest.param("PUT", "/api/v1/strategy/{strategy_id}", {"strategy_id": 2**64}, {}, True, id="put-id-2**64"),
    pytest.param("DELETE", "/api/v1/strategy/{strategy_id}", {"strategy_id": 10**30}, None, True, id="delete-id-10**30"),
    pytest.param("GET", "/api/v1/strategy/{strategy_id}", {"strategy_id": SQLITE_MAX_INT}, None, True,
                 id="get-id-2**63-1"),
    pytest.param("POST", "/api/v1/strategy/create", None, {**STRATEGY_BODY, "quantity": "\u00b2"}, True, id="create-quantity-superscript-two"),
    pytest.param("POST", "/api/v1/strategy/create", None, {**STRATEGY_BODY, "name": "\ud800"}, True, id="create-name-lone-surrogate"),
    pytest.param("POST", "/api/v1/auth/register", None, {"email": "s@example.com", "password": "abcdefghij1\ud800"},
                 False, id="register-password-lone-surrogate"),
    pytest.param("POST", "/api/v1/auth/login", None, {"email": "s@example.com", "password": "abcdefghij1\ud800"},
                 False, id="login-password-lone-surrogate"),
    pytest.param("POST", "/api/v1/strategy/create", None, {**STRATEGY_BODY, "stop_loss": "1e999999999"}, True,
                 id="create-stop-loss-huge-exponent"),
    pytest.param("POST", "/api/v1/strategy/create", None, {**STRATEGY_BODY, "stop_loss": "sNaN"}, True,
                 id="create-stop-loss-snan"),
    pytest.param("POST", "/api/v1/strategy/create", None, [STRATEGY_BODY], True, id="create-body-not-an-object"),
])
def test_inputs_the_generator_rarely_makes(  # type: ignore[no-untyped-def]
    app, client, method: str, path: str, path_parameters: dict | None, body: object, auth: bool
) -> None:
    headers = api_register(client, "hand-picked@example.com") if auth else {}
    kwargs = {"path_parameters": path_parameters} if path_parameters else {}
    if body is not None:
        kwargs.update(body=body, media_type="application/json")
    case = strict_schema[path][method].Case(**kwargs)
    case.call_and_validate(app=app, headers=headers, checks=CHECKS)


def test_a_nul_in_a_name_is_rejected(client) -> None:  # type: ignore[no-untyped-def]
    headers = api_register(client, "nul@example.com")
    response = client.post(f"{API_PREFIX}/strategy/create", json={**STRATEGY_BODY, "name": "a\u0000b"}, headers=headers)
    assert response.status_code == 422, response.json
