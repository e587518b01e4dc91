"""``fal-flux-mcp gallery``: the web gallery on 127.0.0.1, for people whose client runs the server on stdio.

It reads the journal and the output folder the MCP server writes (the files are shared safely between
processes), so it shows the jobs of every fal-flux-mcp process with the same settings, live. The page needs a
token, as over HTTP: a new one for each run, in the printed address (never ``FLUX_MCP_HTTP_TOKEN``,
which is a secret that is never printed).
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import sys
import threading
import webbrowser

import anyio
import uvicorn

from fal_flux_mcp.gallery._data import JobsSource
from fal_flux_mcp.gallery._web import StoppingServer, gallery_app
from fal_flux_mcp.server._http import loopback_security
from fal_flux_mcp.settings import Settings

HOST = "127.0.0.1"


def run_gallery(settings: Settings, *, port: int, open_browser: bool) -> int:
    """Serve the gallery until Ctrl-C; prints its address (with the token) on stdout."""
    token = secrets.token_urlsafe(18)
    sock = socket.socket(socket.AF_INET)
    try:
        sock.bind((HOST, port))
        sock.listen(128)  # from now on a browser's connection waits for the server instead of failing
    except OSError as exc:
        print(f"fal-flux-mcp: cannot serve the gallery on {HOST}:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    bound = sock.getsockname()[1]
    source = JobsSource(settings)
    try:
        stopping = threading.Event()
        app = gallery_app(source, loopback_security(HOST, bound), token, stopping)
        url = f"http://{HOST}:{bound}/gallery?token={token}"
        print(url, flush=True)
        print("fal-flux-mcp: serving the gallery at the address above; Ctrl-C stops it", file=sys.stderr)
        if open_browser:
            webbrowser.open(url)
        server = StoppingServer(uvicorn.Config(app, log_level="warning", lifespan="off"), stopping)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it stopped on
            server.run(sockets=[sock])
    finally:
        anyio.run(source.aclose)
        print("fal-flux-mcp: stopped", file=sys.stderr, flush=True)
        sock.close()
    return 0
