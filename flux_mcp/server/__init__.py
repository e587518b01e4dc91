"""The MCP layer of flux-mcp: tools, resources and the pieces they are built from."""
