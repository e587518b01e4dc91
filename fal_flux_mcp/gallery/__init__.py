"""Seeing the images: the MCP App pages (``static/app-*.html``) and the web gallery (``/gallery``).

The app pages are single self-contained HTML files the MCP server serves as ``ui://`` resources; the web
gallery is a small Starlette app over the job journal and the output folder, mounted on the HTTP
transports and served by ``fal-flux-mcp gallery``. No JavaScript framework, no build step: the pages
are plain files in ``static/``.
"""
