"""The fal-flux-mcp MCP server: tools, resources and transports on top of the fal client.

It knows the fal client's API, not fal's HTTP details; ``build_server`` gives an ``MCPServer`` ready for
stdio, and ``http_app``/``serve_http`` put it on Streamable HTTP or SSE.
"""

from fal_flux_mcp.server._app import AppState, FluxServer, build_server
from fal_flux_mcp.server._http import UnsafeBindError, http_app, serve_http

__all__ = ["AppState", "FluxServer", "UnsafeBindError", "build_server", "http_app", "serve_http"]
