"""Who a tool call is for: the one place tools learn the user's identity.

- Over HTTP with OAuth (``FLUX_MCP_OAUTH_*``), it is the verified token's subject (``sub``), unique
  for the one configured issuer. The SDK has refused every request without a good token before a tool
  runs, so a call with no verified token there gets None, and must be refused rather than served as
  someone.
- Over stdio, or HTTP with the static ``FLUX_MCP_HTTP_TOKEN`` or no token (one person's server), it is
  ``LOCAL_USER``: the server has one user, whose work is all of it.

Whatever is owned per user (jobs, images, spend) is keyed by this value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from fal_flux_mcp.server._records import LOCAL_OWNER

if TYPE_CHECKING:
    from fal_flux_mcp.settings import Settings

#: The one user of a server without OAuth.
LOCAL_USER = LOCAL_OWNER


#: What a call with no verified user is told.
NO_USER = (
    "This server serves each user their own jobs and spend, and this call carries no verified user: connect "
    "over HTTP with an access token from the server's OAuth issuer (Authorization: Bearer ...)."
)


def current_user(ctx: Context[Any, Any]) -> str | None:
    """The subject the current call is for: ``sub`` under OAuth, ``LOCAL_USER`` without; None: refuse it."""
    return user_for(getattr(ctx.request_context.lifespan_context, "settings", None))


def user_for(settings: Settings | None) -> str | None:
    """``current_user`` where no ``Context`` is at hand (a static resource, the resource list)."""
    token = get_access_token()
    if token is not None:
        return token.subject
    return None if settings is None or settings.oauth else LOCAL_USER


def require_user(ctx: Context[Any, Any]) -> str:
    """``current_user``, or a tool error saying why the call cannot be served as anyone."""
    user = current_user(ctx)
    if user is None:
        raise ToolError(NO_USER)
    return user
