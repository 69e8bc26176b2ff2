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
        "token_type": {"const": "Bearer"},
        "expires_at": {"type": "string", "format": "date-time"},
        "user_id": {"type": "integer"},
    },
}
ACCOUNT = {
    "type": ["object", "null"],
    "required": ["broker", "api_key_last4", "status", "validated_at"],
    "properties": {
        "broker": {"type": "string"},
        "api_key_last4": {"type": "string", "maxLength": 4},
        "status": {"enum": ["connected", "login_required"]},
        "validated_at": {"type": ["string", "null"], "format": "date-time"},
    },
    "additionalProperties": False,
}
STATUS = {
    "enum": ["created", "waiting_entry", "in_position", "completed", "stopped_loss", "stopped", "failed", "killed"]
}
STRATEGY = {
    "type": "object",
    "required": ["id", "name", "symbol", "exchange", "product", "quantity", "buy_time", "sell_time",
                 "stop_loss", "status", "position"],
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "symbol": {"type": "string"},
        "exchange": {"type": "string"},
        "product": {"enum": ["MIS", "CNC"]},
        "quantity": {"type": "integer", "minimum": 1},
        "buy_time": TIME,
        "sell_time": TIME,
        "stop_loss": {"type": "string", "description": "rupees, as a decimal string"},
        "status": STATUS,
        "status_reason": {"type": ["string", "null"]},
        "position": {"type": "integer"},
        "entry_price": {"type": ["string", "null"]},
        "needs_attention": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
    },
}
STRATEGY_INPUT = {
    "type": "object",
    "required": ["name", "symbol", "quantity", "buy_time", "sell_time", "stop_loss"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 80},
        "symbol": {"type": "string", "description": "an instrument of the exchange, e.g. INFY"},
        "exchange": {"type": "string", "default": "NSE"},
        "product": {"enum": ["MIS", "CNC"], "default": "MIS"},
        "quantity": {"type": "integer", "minimum": 1},
        "buy_time": TIME,
        "sell_time": TIME,
        "stop_loss": {"type": ["number", "string"], "description": "rupees, > 0, at most 2 decimals"},
    },
}
CREDENTIALS = {
    "type": "object",
    "required": ["email", "password"],
    "properties": {"email": {"type": "string", "format": "email"}, "password": {"type": "string"}},
}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    words = {400: "bad request", 401: "not logged in", 404: "not found (or not yours)", 409: "strategy is running",
             415: "unsupported media type", 422: "invalid fields", 429: "rate limited"}
    return {str(c): _json(ERROR, words[c]) for c in codes}


BODY = {"required": True, "content": {"application/json": {"schema": STRATEGY_INPUT}}}
ID_PARAM = [{"name": "strategy_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}]
SECURED = [{"bearer": []}]

SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "Algo trading API", "version": "1.0.0",
             "description": "Strategies that BUY at buy_time, SELL at sell_time and exit on a stop-loss."},
    "servers": [{"url": "/"}],
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    "paths": {
        "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
            "description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/api/v1/auth/register": {"post": {
            "summary": "Create an account and receive a bearer token",
            "requestBody": {"required": True, "content": {"application/json": {"schema": CREDENTIALS}}},
            "responses": {"201": _json(TOKEN, "registered"), **_errors(422)},
        }},
        "/api/v1/auth/login": {"post": {
            "summary": "Exchange email and password for a bearer token (rate-limited per IP and per account)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": CREDENTIALS}}},
            "responses": {"200": _json(TOKEN, "logged in"), **_errors(401, 429)},
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
                               "access_token": {"type": "string"}}}}}},
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
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        **STRATEGY_INPUT, "required": []}}}},
                    "responses": {"200": _json({"type": "object", "required": ["strategy"],
                                                "properties": {"strategy": STRATEGY}}, "saved"),
                                  **_errors(401, 404, 409, 422)}},
            "delete": {"summary": "Delete a strategy that is not running", "security": SECURED,
                       "responses": {"204": {"description": "deleted"}, **_errors(401, 404, 409)}},
        },
    },
}
