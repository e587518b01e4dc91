"""flux-mcp: fal.ai's FLUX image models as MCP tools, with a local fal emulator for offline use.

The pieces live in subpackages, each usable on its own: ``flux_mcp.fal`` (the fal protocol client),
``flux_mcp.emulator`` (a local stand-in for fal), ``flux_mcp.server`` (the MCP server), and the
shared ``flux_mcp.models`` (fal's endpoint schemas), ``flux_mcp.registry`` and ``flux_mcp.settings``.
"""

from flux_mcp._version import __version__
from flux_mcp.settings import Settings

__all__ = ["Settings", "__version__"]
