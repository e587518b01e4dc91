"""fal-flux-mcp: fal.ai's FLUX image models as MCP tools, with a local fal emulator for offline use.

The pieces live in subpackages, each usable on its own: ``fal_flux_mcp.fal`` (the fal protocol client),
``fal_flux_mcp.emulator`` (a local stand-in for fal), ``fal_flux_mcp.server`` (the MCP server), and the
shared ``fal_flux_mcp.models`` (fal's endpoint schemas), ``fal_flux_mcp.registry`` and ``fal_flux_mcp.settings``.
"""

from fal_flux_mcp._version import __version__
from fal_flux_mcp.settings import Settings

__all__ = ["Settings", "__version__"]
