"""API keys over the JSON API: list, create (the key is in the answer once), revoke."""
from __future__ import annotations

from flask import abort, g, jsonify

from webapp.api import api_user, api_user_id, auth_required, bp, json_body
from webapp.http import json_error
from webapp.services import api_keys
from webapp.services.errors import ValidationFailed


@bp.get("/api-keys")
@auth_required
def api_keys_list():  # type: ignore[no-untyped-def]
    return jsonify(api_keys=[api_keys.to_dict(row) for row in api_keys.list_for(api_user())])


@bp.post("/api-keys")
@auth_required
def api_keys_create():  # type: ignore[no-untyped-def]
    if g.by_api_key:  # a leaked key must not mint keys that outlive its revocation
        return json_error(403, "An API key cannot create API keys: log in (with your code, if two-factor is on).")
    try:
        row, key = api_keys.create(api_user(), json_body().get("name"))
    except ValidationFailed as exc:
        return json_error(422, "Some fields are not valid.", fields=exc.fields)
    return jsonify(api_key=api_keys.to_dict(row), key=key), 201


@bp.delete("/api-keys/<int:key_id>")
@auth_required
def api_keys_revoke(key_id: int):  # type: ignore[no-untyped-def]
    if api_keys.revoke(api_user_id(), key_id) is None:
        abort(404)
    return "", 204
