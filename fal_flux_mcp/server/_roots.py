"""The folders local input images may come from: the user's setting plus the roots the client shares."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import Context

from fal_flux_mcp.server._file_uris import roots_to_dirs

logger = logging.getLogger("fal_flux_mcp.server")


async def allowed_dirs(ctx: Context[Any, Any], state: Any) -> list[Path]:
    """``FLUX_MCP_ALLOWED_DIRS`` plus the roots the client shares (on connections that can ask for them)."""
    dirs = list(state.settings.allowed_dirs)
    capabilities = ctx.client_capabilities
    if capabilities is None or capabilities.roots is None:
        return dirs
    try:
        with anyio.move_on_after(5), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            roots = await ctx.session.list_roots()
            dirs.extend(roots_to_dirs(str(root.uri) for root in roots.roots))
    except Exception as exc:  # no back channel (modern era), or the client failed: use the env list
        logger.debug("could not list the client's roots: %s", exc)
    return dirs
