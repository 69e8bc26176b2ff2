"""The API's contract. A test keeps it true: every /api/v1 route is described here, and a property-based
run (schemathesis) checks real responses against it."""
from __future__ import annotations

TIME = {"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$", "example": "09:20"}

ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
TOKEN = {
    "type": "object",
    "required": ["token", "token_type", "expires_at", "user_id"],
    "properties": {
        "token": {"type": "string"},
        "token_type": {"type": "string", "enum": ["Bearer"]},
        "expires_at": {"type": "string", "format": "date-time"},
        "user_id": {"type": "integer"},
    },
}
ACCOUNT = {
    "type": "object",
    "nullable": True,
    "required": ["broker", "api_key_last4", "status", "validated_at", "login_required", "proxy"],
    "properties": {
        "broker": {"type": "string"},
        "api_key_last4": {"type": "string", "maxLength": 4},
        "status": {"type": "string", "enum": ["connected", "login_required"]},
        "validated_at": {"type": "string", "format": "date-time", "nullable": True},
        "login_required": {"type": "boolean", "description": "a Kite login is needed before START"},
        "proxy": {"type": "string", "nullable": True,
                  "description": "the account's outbound proxy, masked (scheme://host:port, never a user or password); "
                                 "null: Kite calls leave directly from the server"},
    },
    "additionalProperties": False,
}
STATUS = {
    "type": "string",
    "enum": ["created", "waiting_entry", "in_position", "completed", "stopped_loss", "target_hit", "stopped", "failed",
             "killed"]
}
# The exit terms ("More options" on the form). Amounts are decimal strings; percent and points are taken
# from the entry fill when it happens.
DIRECTION = {"type": "string", "enum": ["long", "short"],
             "description": "long: BUY at buy_time, SELL at sell_time; short: SELL first, BUY back (MIS only)"}
STOP_LOSS_TYPE = {"type": "string", "enum": ["price", "percent", "points"],
                  "description": "stop_loss as a price, or percent / points away from the entry fill"}
TARGET_TYPE = {"type": "string", "nullable": True, "enum": ["price", "percent", "points", None],
               "description": "null: no target"}
TRAIL_UNIT = {"type": "string", "nullable": True, "enum": ["points", "percent", None],
              "description": "the unit of trail_every, trail_by and breakeven_at; null when none is set"}
ORDER_TYPE = {"type": "string", "enum": ["MARKET", "LIMIT"],
              "description": "LIMIT: priced limit_buffer_pct beyond the last price, turned into MARKET when "
                             "unfilled after limit_wait_seconds"}
WEEKDAYS = {"type": "string", "nullable": True, "pattern": "^[0-4]{0,5}$", "example": "01234",
            "description": "recurring weekdays as digits, Monday = 0; null: one day per START"}
AMOUNT_OUT = {"type": "string", "nullable": True, "description": "a decimal string (rupees, points or percent)"}
STRATEGY = {
    "type": "object",
    "required": ["id", "name", "symbol", "exchange", "product", "quantity", "buy_time", "sell_time",
                 "stop_loss", "algo_id", "direction", "stop_loss_type", "target_type", "target", "trail_unit",
                 "trail_every", "trail_by", "breakeven_at", "order_type", "limit_buffer_pct", "limit_wait_seconds",
                 "weekdays", "deployed", "status", "status_reason", "position", "entry_price", "needs_attention",
                 "created_at"],
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "symbol": {"type": "string"},
        "exchange": {"type": "string"},
        "product": {"type": "string", "enum": ["MIS", "CNC"]},
        "quantity": {"type": "integer", "minimum": 1},
        "buy_time": TIME,
        "sell_time": TIME,
        "stop_loss": {"type": "string", "description": "rupees, as a decimal string"},
        "algo_id": {"type": "string", "nullable": True},
        "direction": DIRECTION,
        "stop_loss_type": STOP_LOSS_TYPE,
        "target_type": TARGET_TYPE,
        "target": AMOUNT_OUT,
        "trail_unit": TRAIL_UNIT,
        "trail_every": AMOUNT_OUT,
        "trail_by": AMOUNT_OUT,
        "breakeven_at": AMOUNT_OUT,
        "order_type": ORDER_TYPE,
        "limit_buffer_pct": {"type": "string", "nullable": True, "description": "percent, LIMIT only"},
        "limit_wait_seconds": {"type": "integer", "nullable": True, "minimum": 1, "maximum": 60},
        "weekdays": WEEKDAYS,
        "deployed": {"type": "boolean", "description": "runs on its weekdays until undeployed"},
        "status": STATUS,
        "status_reason": {"type": "string", "nullable": True},
        "position": {"type": "integer"},
        "entry_price": {"type": "string", "nullable": True},
        "needs_attention": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
    },
}
NULLABLE_MONEY = {"type": "string", "nullable": True, "description": "rupees, as a decimal string"}
STRATEGY_STATUS = {
    "type": "object",
    "description": "What the strategy looks like now: from the engine's runtime state while it runs, else the database",
    "required": ["strategy_id", "status", "source", "position", "last_action", "last_price", "entry_price",
                 "exit_price", "pnl", "pnl_percent", "status_reason", "needs_attention", "updated_at"],
    "properties": {
        "strategy_id": {"type": "integer"},
        "status": STATUS,
        "source": {"type": "string", "enum": ["runtime", "database"]},
        "position": {"type": "integer"},
        "last_action": {"type": "string", "nullable": True},
        "last_price": NULLABLE_MONEY,
        "entry_price": NULLABLE_MONEY,
        "exit_price": NULLABLE_MONEY,
        "direction": DIRECTION,
        "stop_price": {**NULLABLE_MONEY, "description": "the stop in force (trailed, once it has moved); null "
                                                        "before the entry fills"},
        "target_price": {**NULLABLE_MONEY, "description": "the target in force; null without one or before entry"},
        "pnl": NULLABLE_MONEY,
        "pnl_percent": {"type": "string", "nullable": True, "description": "percent of the entry value"},
        "status_reason": {"type": "string", "nullable": True},
        "needs_attention": {"type": "boolean"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}
ORDER = {
    "type": "object",
    "required": ["id", "event", "event_id", "side", "quantity", "filled_quantity", "price", "broker_order_id", "tag", "status",
                 "attempt", "error", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "integer"},
        "event": {"type": "string", "enum": ["BUY", "SELL", "STOPLOSS", "STOP", "KILL"]},
        "event_id": {"type": "string"},
        "side": {"type": "string", "enum": ["BUY", "SELL"]},
        "quantity": {"type": "integer", "description": "what was asked for"},
        "filled_quantity": {"type": "integer", "description": "what the broker filled: the position"},
        "price": NULLABLE_MONEY,
        "broker_order_id": {"type": "string", "nullable": True},
        "tag": {"type": "string"},
        "status": {"type": "string", "description": (
            "SENDING (claimed, maybe at the broker), then the broker's final COMPLETE, CANCELLED (possibly "
            "after a partial fill) or REJECTED; ERROR (not placed), TIMEOUT (looked up by tag next), NOT_PLACED")},
        "attempt": {"type": "integer"},
        "error": {"type": "string", "nullable": True},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}
LIFECYCLE = {"type": "object", "required": ["message", "status"],
             "properties": {"message": {"type": "string"}, "status": STRATEGY_STATUS}}
AMOUNT_IN = {"anyOf": [{"type": "number"}, {"type": "string", "nullable": True}],
             "description": "> 0, at most 2 decimals; null or empty: not set"}
STRATEGY_INPUT = {
    "type": "object",
    "required": ["name", "symbol", "quantity", "buy_time", "sell_time", "stop_loss"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 80},
        "symbol": {"type": "string", "description": "an instrument of the exchange, e.g. INFY"},
        "exchange": {"type": "string", "default": "NSE"},
        "product": {"type": "string", "enum": ["MIS", "CNC"], "default": "MIS"},
        "quantity": {"type": "integer", "minimum": 1},
        "buy_time": TIME,
        "sell_time": TIME,
        "stop_loss": {"anyOf": [{"type": "number"}, {"type": "string"}],
                      "description": "per stop_loss_type: rupees, percent (< 100 for a long) or points; > 0, at "
                                     "most 2 decimals. A price stop must be below the last price for a long, "
                                     "above it for a short"},
        "algo_id": {"type": "string", "nullable": True, "maxLength": 32,
                    "description": "the algo id this strategy's orders carry (default: the KITE_ALGO_ID setting)"},
        "direction": {**DIRECTION, "default": "long"},
        "stop_loss_type": {**STOP_LOSS_TYPE, "default": "price"},
        "target_type": {**TARGET_TYPE, "default": None},
        "target": {**AMOUNT_IN, "description": "required with a target_type; a price target must be beyond the "
                                               "last price and the stop"},
        "trail_unit": {"type": "string", "nullable": True, "enum": ["points", "percent", None], "default": "points"},
        "trail_every": {**AMOUNT_IN, "description": "trailing: for every trail_every in favour ... (with trail_by)"},
        "trail_by": {**AMOUNT_IN, "description": "... move the stop trail_by (at most trail_every)"},
        "breakeven_at": {**AMOUNT_IN, "description": "move the stop to the entry price once this far in favour"},
        "order_type": {**ORDER_TYPE, "default": "MARKET"},
        "limit_buffer_pct": {**AMOUNT_IN, "description": "LIMIT only (required): 0 < percent <= 5, at most 3 "
                                                         "decimals"},
        "limit_wait_seconds": {"anyOf": [{"type": "integer"}, {"type": "string", "nullable": True}],
                               "description": "LIMIT only (required): 1 to 60 seconds, then MARKET"},
        "weekdays": WEEKDAYS,
    },
    "example": {"name": "Morning INFY", "symbol": "INFY", "exchange": "NSE", "product": "MIS", "quantity": 10,
                "buy_time": "09:20", "sell_time": "15:00", "stop_loss": "1400.50"},
}
# PUT: the same fields, all optional. (OpenAPI 3.0 forbids an empty "required" list: leave it out.)
STRATEGY_CHANGES = {k: v for k, v in STRATEGY_INPUT.items() if k not in ("required", "example")}
CREDENTIALS = {
    "type": "object",
    "required": ["email", "password"],
    "properties": {"email": {"type": "string", "format": "email"}, "password": {"type": "string"}},
    "example": {"email": "trader@example.com", "password": "correct horse 42"},
}

LOGIN = {**CREDENTIALS, "properties": {
    **CREDENTIALS["properties"],
    "totp": {"type": "string", "description": "required when two-factor login is on: the 6-digit code from the "
                                              "authenticator app (or a recovery code, which is then spent)"}}}
API_KEY = {
    "type": "object",
    "required": ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at", "active"],
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "prefix": {"type": "string", "description": "the key's start, ak_<prefix>, to tell keys apart; the key "
                                                    "itself is shown only when created"},
        "created_at": {"type": "string", "format": "date-time"},
        "last_used_at": {"type": "string", "format": "date-time", "nullable": True,
                         "description": "updated at most once a minute"},
        "revoked_at": {"type": "string", "format": "date-time", "nullable": True},
        "active": {"type": "boolean"},
    },
    "additionalProperties": False,
}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    words = {400: "bad request", 401: "not logged in", 403: "not allowed with this credential", 404: "not found (or not yours)",
             409: "not allowed in the strategy's current state",
             415: "unsupported media type", 422: "invalid fields", 429: "rate limited",
             503: "engine unavailable (Redis unreachable); nothing was changed"}
    return {str(c): _json(ERROR, words[c]) for c in codes}


BODY = {"required": True, "content": {"application/json": {"schema": STRATEGY_INPUT}}}
ID_PARAM = [{"name": "strategy_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}]
SECURED = [{"bearer": []}]
CHART = {
    "type": "object",
    "required": ["symbol", "ticks", "markers", "stop_loss", "buy_at", "sell_at"],
    "properties": {
        "symbol": {"type": "string"},
        "ticks": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2,
                                             "maxItems": 2}, "description": "[epoch seconds, price]"},
        "markers": {"type": "array", "items": {"type": "object", "required": ["t", "price", "side", "event"],
                                               "properties": {"t": {"type": "number"}, "price": {"type": "number"},
                                                              "side": {"type": "string"},
                                                              "event": {"type": "string"}}}},
        "stop_loss": {"type": "number"},
        "buy_at": {"type": "number"},
        "sell_at": {"type": "number"},
    },
}

MONEY_OUT = {"type": "string", "description": "rupees, as a decimal string (negative: a loss)"}
RISK = {"type": "object", "required": ["daily_loss_limit", "max_open_positions", "running_strategies", "today", "halt"],
        "properties": {
            "daily_loss_limit": {"type": "string", "nullable": True, "description": "rupees, positive; null: no limit"},
            "max_open_positions": {"type": "integer", "nullable": True, "minimum": 1, "maximum": 1000},
            "running_strategies": {"type": "integer", "minimum": 0},
            "today": {"type": "object", "required": ["trading_day", "pnl", "realised", "unrealised", "open_positions",
                                                     "unpriced_strategies", "runs", "daily_loss_limit", "limit_hit"],
                      "properties": {"trading_day": {"type": "string", "format": "date"}, "pnl": MONEY_OUT,
                                     "realised": MONEY_OUT, "unrealised": MONEY_OUT,
                                     "open_positions": {"type": "integer", "minimum": 0},
                                     "unpriced_strategies": {"type": "array", "items": {"type": "integer"}},
                                     "runs": {"type": "integer", "minimum": 0},
                                     "daily_loss_limit": {"type": "string", "nullable": True},
                                     "limit_hit": {"type": "boolean"}}},
            "halt": {"type": "object", "nullable": True, "required": ["trading_day", "reason", "created_at"],
                     "properties": {"trading_day": {"type": "string", "format": "date"}, "reason": {"type": "string"},
                                    "created_at": {"type": "string", "format": "date-time"}}}}}
RISK_INPUT = {"type": "object", "properties": {
    "daily_loss_limit": {"oneOf": [{"type": "string"}, {"type": "number"}], "nullable": True,
                         "description": "rupees > 0, at most two decimals"},
    "max_open_positions": {"oneOf": [{"type": "integer"}, {"type": "string"}], "nullable": True,
                           "description": "1 to 1000"}},
    "example": {"daily_loss_limit": "5000", "max_open_positions": 3}}
RISK_PATHS = {"/api/v1/risk": {
    "get": {"summary": "Your risk limits, today's P&L against the daily loss limit, and today's halt",
            "security": SECURED, "responses": {"200": _json(RISK, "risk limits"), **_errors(401)}},
    "put": {"summary": "Set your risk limits: a field absent is left as it is; null or \"\" removes that limit. "
                       "Audited.",
            "security": SECURED,
            "requestBody": {"required": True, "content": {"application/json": {"schema": RISK_INPUT}}},
            "responses": {"200": _json(RISK, "the limits as they now are"), **_errors(400, 401, 422)}}}}

API_KEY_PATHS = {
    "/api/v1/api-keys": {
        "get": {"summary": "Your API keys, revoked ones included (never the keys themselves)", "security": SECURED,
                "responses": {"200": _json({"type": "object", "required": ["api_keys"],
                                            "properties": {"api_keys": {"type": "array", "items": API_KEY}}},
                                           "keys, oldest first"), **_errors(401)}},
        "post": {"summary": "Create an API key: send it as 'Authorization: Bearer ak_…' on every route until "
                            "revoked. The key is in this answer only. Audited.",
                 "security": SECURED,
                 "requestBody": {"required": False, "content": {"application/json": {"schema": {
                     "type": "object", "properties": {"name": {"type": "string", "maxLength": 80,
                                                               "description": "what uses it (default 'API key')"}},
                     "example": {"name": "phone dashboard"}}}}},
                 "responses": {"201": _json({"type": "object", "required": ["api_key", "key"],
                                             "properties": {"api_key": API_KEY,
                                                            "key": {"type": "string", "pattern": "^ak_"}}},
                                            "created"), **_errors(400, 401, 403, 422)}},
    },
    "/api/v1/api-keys/{key_id}": {
        "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
        "delete": {"summary": "Revoke an API key: refused from the next request on, in every process. Audited.",
                   "security": SECURED,
                   "responses": {"204": {"description": "revoked (or already revoked)"}, **_errors(401, 404)}},
    },
}

MONEY_OR_NULL = {"type": "string", "nullable": True, "pattern": r"^-?\d+\.\d{2}$",
                 "description": "a decimal string with two places (rupees, or percent for pnl_percent); no ₹, no "
                                "grouping"}
TWO_PLACES = {"type": "string", "pattern": r"^-?\d+\.\d{2}$"}
RUN = {
    "type": "object",
    "required": ["run_id", "run_date", "started_at", "direction", "status", "status_text", "reason", "current",
                 "in_progress", "entry_quantity", "entry_price", "exit_quantity", "exit_price", "open_quantity",
                 "last_price", "pnl", "pnl_percent", "realised", "cumulative_pnl", "stop_price", "target_price",
                 "orders"],
    "properties": {
        "run_id": {"type": "integer"},
        "run_date": {"type": "string", "format": "date", "description": "the IST trading day"},
        "started_at": {"type": "string", "format": "date-time", "description": "when the run was begun or skipped"},
        "direction": DIRECTION,
        "status": {"type": "string", "nullable": True, "enum": [*STATUS["enum"], "skipped", None],
                   "description": "how the run ended (the current run: the strategy's status now); skipped: a day of "
                                  "a recurring strategy that never ran; null: an old run whose outcome was never "
                                  "recorded"},
        "status_text": {"type": "string", "description": "the status in a trader's words, e.g. 'Stop-loss hit'"},
        "reason": {"type": "string", "nullable": True},
        "current": {"type": "boolean", "description": "the strategy's latest run"},
        "in_progress": {"type": "boolean", "description": "current and still running"},
        "entry_quantity": {"type": "integer", "minimum": 0,
                           "description": "filled on the entry side (BUY long, SELL short)"},
        "entry_price": {**MONEY_OR_NULL, "description": "average entry fill price"},
        "exit_quantity": {"type": "integer", "minimum": 0},
        "exit_price": {**MONEY_OR_NULL, "description": "average exit fill price"},
        "open_quantity": {"type": "integer", "minimum": 0, "description": "entered and not exited, per the fills"},
        "last_price": {**MONEY_OR_NULL, "description": "the price an in-progress run's open position is marked at"},
        "pnl": {**MONEY_OR_NULL, "description": "rupees from the fills; null when nothing was entered or an open "
                                                "position cannot be valued"},
        "pnl_percent": {**MONEY_OR_NULL, "description": "of the entry value"},
        "realised": {"type": "boolean", "description": "the position is closed: pnl counts in the total"},
        "cumulative_pnl": {**TWO_PLACES, "description": "realised P&L of every run up to and including this one"},
        "stop_price": MONEY_OR_NULL,
        "target_price": MONEY_OR_NULL,
        "orders": {"type": "integer", "minimum": 0, "description": "order rows of the run, every attempt"},
    },
    "additionalProperties": False,
}
RUNS = {
    "type": "object",
    "required": ["strategy_id", "runs", "summary", "equity"],
    "properties": {
        "strategy_id": {"type": "integer"},
        "runs": {"type": "array", "items": RUN, "description": "oldest first (by run date), skipped days included"},
        "summary": {
            "type": "object",
            "required": ["runs", "skipped", "traded", "wins", "losses", "realised_pnl", "unrealised_pnl"],
            "properties": {
                "runs": {"type": "integer", "minimum": 0, "description": "runs that were not skipped"},
                "skipped": {"type": "integer", "minimum": 0},
                "traded": {"type": "integer", "minimum": 0, "description": "runs that entered"},
                "wins": {"type": "integer", "minimum": 0},
                "losses": {"type": "integer", "minimum": 0},
                "realised_pnl": TWO_PLACES,
                "unrealised_pnl": {**MONEY_OR_NULL, "description": "the in-progress run's open P&L, if valued"},
            },
            "additionalProperties": False,
        },
        "equity": {
            "type": "array", "description": "the equity curve: one point per run that closed a position",
            "items": {"type": "object", "required": ["run_id", "run_date", "pnl", "cumulative_pnl"],
                      "properties": {"run_id": {"type": "integer"}, "run_date": {"type": "string", "format": "date"},
                                     "pnl": MONEY_OR_NULL, "cumulative_pnl": TWO_PLACES},
                      "additionalProperties": False},
        },
    },
    "additionalProperties": False,
}


def _csv(description: str, columns: str) -> dict:
    return {"description": f"{description} (UTF-8 CSV, an attachment; columns: {columns})",
            "headers": {"Content-Disposition": {"schema": {"type": "string"},
                                                "description": 'attachment; filename="strategy-<id>-….csv"'}},
            "content": {"text/csv": {"schema": {"type": "string"}}}}


HISTORY_PATHS = {
    "/api/v1/strategy/{strategy_id}/runs": {
        "parameters": ID_PARAM,
        "get": {"summary": "Run history: each run's entry, exit, P&L and how it ended; totals; the equity curve",
                "security": SECURED, "responses": {"200": _json(RUNS, "runs"), **_errors(401, 404)}},
    },
    "/api/v1/strategy/{strategy_id}/runs.csv": {
        "parameters": ID_PARAM,
        "get": {"summary": "The runs as CSV (one line per run, skipped days included)", "security": SECURED,
                "responses": {"200": _csv("runs", "run_id, run_date, started_at_ist, direction, status, status_text, "
                                                  "reason, entry_quantity, entry_price, exit_quantity, exit_price, "
                                                  "open_quantity, pnl, pnl_percent, realised, cumulative_pnl, "
                                                  "stop_price, target_price, in_progress"),
                              **_errors(401, 404)}},
    },
    "/api/v1/strategy/{strategy_id}/orders.csv": {
        "parameters": ID_PARAM,
        "get": {"summary": "Every order as CSV, for tax and the broker's contract notes", "security": SECURED,
                "responses": {"200": _csv("orders", "date_ist, time_ist, run_id, event, side, quantity, "
                                                    "filled_quantity, average_price, broker_order_id, tag, status, "
                                                    "attempt, error, event_id"),
                              **_errors(401, 404)}},
    },
}

SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "Algo trading API", "version": "1.0.0",
             "description": "Strategies that BUY at buy_time, SELL at sell_time and exit on a stop-loss."},
    "servers": [{"url": "/"}],
    "components": {"securitySchemes": {"bearer": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "a token from /api/v1/auth/login, or an API key (ak_…) from /api/v1/api-keys"}}},
    "paths": {
        "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
            "description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/api/v1/auth/register": {"post": {
            "summary": "Create an account and receive a bearer token",
            "requestBody": {"required": True, "content": {"application/json": {"schema": CREDENTIALS}}},
            "responses": {"201": _json(TOKEN, "registered"), **_errors(422)},
        }},
        "/api/v1/auth/login": {"post": {
            "summary": "Exchange email and password (and, with two-factor login on, the current code as totp) for "
                       "a bearer token (rate-limited per IP and per account). 401 TOTP_REQUIRED: the account has "
                       "two-factor login on; scripts should use an API key instead",
            "requestBody": {"required": True, "content": {"application/json": {"schema": LOGIN}}},
            "responses": {"200": _json(TOKEN, "logged in"), **_errors(401, 422, 429)},
        }},
        "/api/v1/broker": {"get": {
            "summary": "The connected broker account (secrets are never returned)", "security": SECURED,
            "responses": {"200": _json({"type": "object", "required": ["account"],
                                        "properties": {"account": ACCOUNT}}, "account or null"), **_errors(401)},
        }},
        "/api/v1/broker/connect": {"post": {
            "summary": "Validate and store broker credentials (encrypted)", "security": SECURED,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["api_key", "api_secret", "access_token"],
                "properties": {"api_key": {"type": "string"}, "api_secret": {"type": "string"},
                               "access_token": {"type": "string"},
                               "proxy": {"type": "string", "maxLength": 500, "writeOnly": True,
                                         "description": "outbound proxy for this account's Kite calls (your "
                                                        "registered static IP): http://host:port or "
                                                        "http://user:pass@host:port (http or https); \"\": direct; "
                                                        "left out: the stored proxy stays. Returned only masked"}},
                "example": {"api_key": "kitekey1234", "api_secret": "kitesecret99", "access_token": "kitetoken77"},
            }}}},
            "responses": {"200": _json({"type": "object", "required": ["account"],
                                        "properties": {"account": ACCOUNT}}, "connected"),
                          **_errors(400, 401, 422)},
        }},
        "/api/v1/strategies": {"get": {
            "summary": "The caller's strategies", "security": SECURED,
            "responses": {"200": _json({"type": "object", "required": ["strategies"],
                                        "properties": {"strategies": {"type": "array", "items": STRATEGY}}},
                                       "list"), **_errors(401)},
        }},
        "/api/v1/strategy/create": {"post": {
            "summary": "Create a strategy", "security": SECURED, "requestBody": BODY,
            "responses": {"201": _json({"type": "object", "required": ["strategy_id", "strategy"],
                                        "properties": {"strategy_id": {"type": "integer"}, "strategy": STRATEGY}},
                                       "created"), **_errors(401, 422)},
        }},
        "/api/v1/strategy/{strategy_id}": {
            "parameters": ID_PARAM,
            "get": {"summary": "One strategy", "security": SECURED,
                    "responses": {"200": _json({"type": "object", "required": ["strategy"],
                                                "properties": {"strategy": STRATEGY}}, "the strategy"),
                                  **_errors(401, 404)}},
            "put": {"summary": "Change a strategy that is not running (fields not sent are kept)",
                    "security": SECURED,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": STRATEGY_CHANGES}}},
                    "responses": {"200": _json({"type": "object", "required": ["strategy"],
                                                "properties": {"strategy": STRATEGY}}, "saved"),
                                  **_errors(401, 404, 409, 422)}},
            "delete": {"summary": "Delete a strategy that is not running", "security": SECURED,
                       "responses": {"204": {"description": "deleted"}, **_errors(401, 404, 409)}},
        },
        "/api/v1/strategy/{strategy_id}/chart": {
            "parameters": ID_PARAM,
            "get": {"summary": "Today's price samples, buy/sell instants, stop-loss and order markers",
                    "security": SECURED,
                    "responses": {"200": _json(CHART, "chart data"), **_errors(401, 404)}},
        },
        "/api/v1/strategy/{strategy_id}/start": {
            "parameters": ID_PARAM,
            "post": {"summary": "START: BUY at buy_time and SELL at sell_time today (idempotent while running)",
                     "security": SECURED,
                     "responses": {"200": _json(LIFECYCLE, "running (or already running)"),
                                   **_errors(401, 404, 409, 503)}},
        },
        "/api/v1/strategy/{strategy_id}/stop": {
            "parameters": ID_PARAM,
            "post": {"summary": "STOP: square off any position, then halt (done by the engine, asynchronously)",
                     "security": SECURED,
                     "responses": {"202": _json(LIFECYCLE, "stop queued"), **_errors(401, 404, 409, 503)}},
        },
        "/api/v1/strategy/{strategy_id}/acknowledge": {
            "parameters": ID_PARAM,
            "post": {"summary": "Acknowledge a flagged position left by a failed run (checked at the broker by a "
                                "human); START is refused until then. Audited.",
                     "security": SECURED,
                     "responses": {"200": _json(LIFECYCLE, "acknowledged"), **_errors(401, 404, 409)}},
        },
        "/api/v1/strategy/status/{strategy_id}": {
            "parameters": ID_PARAM,
            "get": {"summary": "Live status, position and P&L", "security": SECURED,
                    "responses": {"200": _json(STRATEGY_STATUS, "status"), **_errors(401, 404)}},
        },
        "/api/v1/strategy/{strategy_id}/orders": {
            "parameters": ID_PARAM,
            "get": {"summary": "Every order placed for the strategy, oldest first", "security": SECURED,
                    "responses": {"200": _json({"type": "object", "required": ["orders"],
                                                "properties": {"orders": {"type": "array", "items": ORDER}}},
                                               "orders"), **_errors(401, 404)}},
        },
        **RISK_PATHS,
        **HISTORY_PATHS,
        **API_KEY_PATHS,
    },
}
