"""The page where a user enters, replaces or deletes their own fal key (``FLUX_MCP_USER_KEYS=on``).

Served at ``/keys`` beside the MCP endpoint. A browser has no access token, so the page is reached
with the ticket of the link the user was sent (``_key_prompt``): it names the user, expires after
``TICKET_SECONDS`` and is MAC'd with the server's secret, so it cannot be made for someone else. The
form posts the ticket back with the key; the key goes into the journal sealed, and never into a URL,
a page, a log line or an answer. The page loads nothing from elsewhere and sends no referrer, so
the ticket in its address goes nowhere either.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.types import Receive, Scope, Send

from fal_flux_mcp.server._user_keys import KEY_PAGE_PATH, UserKeys

logger = logging.getLogger("fal_flux_mcp.server")

#: The largest form accepted: a fal key is under a hundred characters.
_MAX_BODY = 8192
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STYLE = (
    "body{font:16px system-ui,sans-serif;max-width:34em;margin:3em auto;padding:0 1em;color:#222}"
    "input[type=password]{width:100%;padding:.5em;font:inherit;box-sizing:border-box}"
    "button{padding:.5em 1em;font:inherit;margin:.8em .5em 0 0}.note{color:#555;font-size:.9em}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head>'
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=_HEADERS)


def _refused() -> HTMLResponse:
    return _page(
        "This link does not work",
        "<p>The link is damaged, was made for someone else, or is older than ten minutes. Call the tool "
        "again in your MCP client to get a new one.</p>",
        403,
    )


def _form(ticket: str, user: str, stored: bool, notice: str = "") -> str:
    state = (
        "A fal key of yours is stored here. Enter another to replace it, or delete it."
        if stored
        else "You have no fal key stored here yet."
    )
    delete = '<button name="action" value="delete">Delete my key</button>' if stored else ""
    return (
        f"{notice}<p>For <b>{html.escape(user)}</b>. {state}</p>"
        f'<form method="post" action="{KEY_PAGE_PATH}">'
        f'<input type="hidden" name="ticket" value="{html.escape(ticket)}">'
        "<label>fal key (<code>key_id:key_secret</code>, from fal.ai/dashboard/keys)<br>"
        '<input type="password" name="key" autocomplete="off" spellcheck="false"></label><br>'
        f'<button name="action" value="save">Save my key</button>{delete}</form>'
        '<p class="note">The key is stored encrypted, is used only for your jobs, and is never shown '
        "again, here or in the chat.</p>"
    )


class KeyPage:
    """The ASGI app of ``/keys``: GET shows the form, POST saves or deletes the key."""

    def __init__(self, keys: Callable[[], UserKeys | None]) -> None:
        self._keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self._answer(request)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> HTMLResponse:
        keys = self._keys()
        if keys is None:
            return _page(
                "Not available", "<p>The server is starting or stopping; try again shortly.</p>", 503
            )
        if request.method == "GET":
            ticket = request.query_params.get("ticket", "")
            user = keys.sealer.ticket_owner(ticket)
            if user is None:
                return _refused()
            return _page("Your fal key", _form(ticket, user, keys.has_key(user)))
        if request.method != "POST":
            return _page("Not allowed", "<p>Only GET and POST.</p>", 405)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_BODY:
                return _page("Too large", "<p>That form is far larger than a fal key.</p>", 413)
        fields = {name: values[0] for name, values in parse_qs(body.decode("utf-8", "replace")).items()}
        ticket = fields.get("ticket", "")
        user = keys.sealer.ticket_owner(ticket)
        if user is None:
            return _refused()
        if fields.get("action") == "delete":
            keys.delete(user)
            logger.info("a user deleted their fal key")
            return _page(
                "Key deleted",
                "<p>Your fal key is no longer stored here. The server will ask for one the next time a tool "
                "needs it.</p>",
            )
        problem = keys.store(user, fields.get("key", ""))
        if problem is not None:
            notice = f'<p role="alert"><b>Not saved.</b> {html.escape(problem)}</p>'
            return _page("Your fal key", _form(ticket, user, keys.has_key(user), notice), 400)
        return _page(
            "Key saved",
            "<p>Your fal key is stored, encrypted. Go back to your MCP client: the call goes on, or call "
            "the tool again.</p>",
        )
