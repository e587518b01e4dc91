"""Credentials as fal checks them: API keys on the queue, run and REST hosts, bearer tokens on the CDN.

Each check returns fal's refusal (401 with fal's wording, 403 for a locked account) or None when the
request may proceed. The key refusals also say which key this emulator accepts, for a person who
pointed their own code here.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from fal_flux_mcp.emulator._config import EmulatorConfig
from fal_flux_mcp.emulator._responses import json_response
from fal_flux_mcp.emulator._storage import FileStore

_NO_USER = "No user found for Key ID and Secret"
_BAD_FORMAT = "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'."


def check_key(config: EmulatorConfig, request: Request) -> Response | None:
    """fal's answer to a missing, malformed, unknown or locked key; None when the key is good."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    # fal's words first, then what a person pointing their own code here needs: the key to use.
    accepted = (
        "any key of the form id:secret; set FAL_KEY to one"
        if config.accept_any_key
        else f"the key {config.key}; set FAL_KEY to it"
    )
    hint = f" This fal emulator accepts {accepted}."
    if scheme.lower() != "key" or not credentials:
        return json_response({"detail": _NO_USER + "." + hint}, 401)
    if ":" not in credentials:
        return json_response({"detail": _BAD_FORMAT + hint}, 401)
    accepted_keys = [config.key, *config.keys]
    if not config.accept_any_key and not any(
        secrets.compare_digest(credentials.encode(), key.encode()) for key in accepted_keys
    ):
        return json_response({"detail": _NO_USER + "." + hint}, 401)
    if config.locked:
        return json_response({"detail": f"User is locked. Reason: {config.lock_reason}"}, 403)
    return None


def check_token(files: FileStore, request: Request) -> Response | None:
    """The CDN's answer to a missing or unknown upload token; None when it is good."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not files.token_valid(token.strip()):
        return json_response({"detail": "Invalid or expired token"}, 401)
    return None


def account(request: Request) -> str:
    """The account a request's key belongs to (its key id): whose requests it may see."""
    credentials = request.headers.get("authorization", "").strip().partition(" ")[2].strip()
    return credentials.partition(":")[0]
