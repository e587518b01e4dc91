"""Sending a user without a fal key of their own to the key page, before a tool that needs one runs.

Under ``FLUX_MCP_USER_KEYS=on`` a tool that talks to fal for the user (generating, following,
cancelling, uploading) first needs their key. The key must never pass through the chat, so the
user is sent to the server's key page (``_key_page``) by URL-mode elicitation, in either protocol
era: on 2026-07-28 as an input-required answer (the client shows the link, the user enters the key
there, and the client calls again), on older connections as an ``elicitation/create`` request
mid-call, after which the call waits for the key to be stored. A client that cannot elicit in URL
mode gets a tool error with the link for the user to open: the link is not the key, only a
short-lived ticket to the page, bound to this user.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import anyio
from mcp.server.elicitation import AcceptedUrlElicitation
from mcp.server.mcpserver import Context
from mcp.types import (
    CallToolResult,
    ElicitRequest,
    ElicitRequestURLParams,
    InputRequiredResult,
    TextContent,
)

from fal_flux_mcp.server._user_keys import KEY_PAGE_PATH, TICKET_SECONDS, UserKeys
from fal_flux_mcp.settings import Settings

logger = logging.getLogger("fal_flux_mcp.server")

#: The name of the key question among a 2026-07-28 call's input requests.
INPUT_KEY = "fal_flux_mcp.fal_key"


def key_page_url(ctx: Context[Any, Any], settings: Settings, ticket: str) -> str | None:
    """The key page's link for ``ticket``: under ``FLUX_MCP_PUBLIC_URL``, else where this request came."""
    origin = settings.public_url.rstrip("/") if settings.public_url else None
    if origin is None:
        request = ctx.request_context.request
        base_url = getattr(request, "base_url", None)
        if base_url is None:
            return None  # not over HTTP: there is no page to send the user to
        origin = str(base_url).rstrip("/")
    return f"{origin}{KEY_PAGE_PATH}?ticket={ticket}"


def _refusal(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=text)], is_error=True)


async def ask_for_key(
    ctx: Context[Any, Any], settings: Settings, keys: UserKeys, user: str
) -> CallToolResult | InputRequiredResult | None:
    """None when ``user`` has a key (the call goes on); else the answer that sends them to the page."""
    if keys.has_key(user):
        return None
    url = key_page_url(ctx, settings, keys.sealer.ticket(user))
    if url is None:
        return _refusal(
            "This server uses each user's own fal key (FLUX_MCP_USER_KEYS=on), and you have none stored. "
            "Keys are entered on a page the server serves over HTTP: connect to it over HTTP, or set "
            "FLUX_MCP_PUBLIC_URL to where that page is reached. Nothing was sent to fal."
        )
    minutes = TICKET_SECONDS // 60
    open_it = (
        f"Open {url} in your browser and enter your fal key there (the link works for {minutes} minutes and "
        "only for you; never paste the key into the chat), then call the tool again. Nothing was sent to fal."
    )
    message = (
        "This server uses your own fal key, and you have none stored yet. Enter it on the server's page "
        "(it does not pass through the chat); the call goes on once it is stored."
    )
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None or elicitation.url is None:
        return _refusal(f"This server uses your own fal key, and you have none stored yet. {open_it}")
    if not ctx.session.can_send_request:
        # 2026-07-28: the link travels in the answer; the client shows it and calls again.
        if ctx.input_responses and INPUT_KEY in ctx.input_responses:
            return _refusal(f"No fal key was stored for you yet. {open_it}")
        request = ElicitRequest(params=ElicitRequestURLParams(message=message, url=url))
        return InputRequiredResult(input_requests={INPUT_KEY: request})
    # An older connection asks mid-call: the call waits for the user to store the key, not for ever
    # (some clients declare elicitation and never answer).
    elicitation_id = uuid.uuid4().hex
    with anyio.move_on_after(settings.approval_timeout_seconds):
        try:
            outcome = await ctx.elicit_url(message, url, elicitation_id=elicitation_id)
        except Exception:  # declared URL mode but could not take the request after all
            logger.info("the client declared URL elicitation but the request failed", exc_info=True)
            return _refusal(f"You have no fal key stored here. {open_it}")
        if not isinstance(outcome, AcceptedUrlElicitation):
            return _refusal(
                f"The key page was not opened, so you still have no fal key stored here. {open_it}"
            )
        if await keys.wait_for_key(user, settings.approval_timeout_seconds):
            try:  # the spec's word to the client that the page is done with
                await ctx.request_context.session.send_elicit_complete(elicitation_id, ctx.request_id)
            except Exception:
                logger.info("could not tell the client the key page is done", exc_info=True)
            return None
    return _refusal(f"No fal key was stored in time (FLUX_MCP_APPROVAL_TIMEOUT_SECONDS). {open_it}")
