"""The ``fal-flux-mcp`` command: serve the MCP server, run the local fal emulator, or run the demo.

On stdio, stdout belongs to the protocol: everything this module prints for people goes to stderr,
except the demo's report, which is not an MCP server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from fal_flux_mcp._version import __version__

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from fal_flux_mcp.settings import Settings


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default after its help, except the meaningless ones (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class _HelpFormatter(_DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every option, and the generated environment list kept as laid out."""


def _parser() -> argparse.ArgumentParser:
    from fal_flux_mcp.emulator._config import add_arguments as add_emulator_arguments
    from fal_flux_mcp.settings import environment_help

    parser = argparse.ArgumentParser(
        prog="fal-flux-mcp",
        description="fal.ai FLUX image models as MCP tools. With no command, serves MCP on stdio.",
        epilog=environment_help(),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fal-flux-mcp {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser(
        "serve",
        help="serve the MCP server (the default command)",
        description="Serve the MCP server until Ctrl-C or SIGTERM (exit code 0). Settings are checked "
        "first: a problem stops it with one line per problem on stderr and exit code 2.",
        epilog="The environment variables are listed by 'fal-flux-mcp --help'.",
        formatter_class=_DefaultsFormatter,
    )
    serve.add_argument(
        "--transport",
        choices=["stdio", "sse", "streamable-http"],
        default="stdio",
        help="stdio for a client that starts the server; sse or streamable-http to serve on a port",
    )
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port")

    emulator = commands.add_parser(
        "emulator",
        help="run the local fal emulator (no account, no network)",
        description="Serve fal's queue, run and storage API on loopback, for fal-flux-mcp or your own "
        "code (fal-client included). It draws placeholder pictures, not the prompt.",
        formatter_class=_DefaultsFormatter,
    )
    add_emulator_arguments(emulator)

    demo = commands.add_parser(
        "demo",
        help="make an image end to end, offline, through a real MCP client",
        description="Start the emulator and the server, and generate one image through MCP. The "
        "emulator draws a placeholder picture, not the prompt.",
        formatter_class=_DefaultsFormatter,
    )
    demo.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting", help="the prompt")
    demo.add_argument("--model", default="fal-ai/flux-pro/v1.1-ultra", help="the FLUX endpoint")
    demo.add_argument("--aspect-ratio", default="16:9", help="the image's aspect ratio")
    demo.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where to save the image (default: a new temporary folder, printed; never FLUX_MCP_OUTPUT_DIR)",
    )
    gallery = commands.add_parser(
        "gallery",
        help="see your images in the browser (the web gallery, on 127.0.0.1)",
        description="Serve the web gallery of the jobs in the journal (recent images, each job, spend) on "
        "127.0.0.1, print its address and open it in the browser. Jobs appear as they finish.",
        formatter_class=_DefaultsFormatter,
    )
    gallery.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    gallery.add_argument("--no-browser", action="store_true", help="only print the address")
    config = commands.add_parser(
        "config",
        help="print an mcpServers entry with absolute paths, for a client",
        description="Print an mcpServers entry for an MCP client, and warn on stderr about any problem "
        "in the current environment's settings.",
        formatter_class=_DefaultsFormatter,
    )
    config.add_argument("--name", default="flux", help="server name in the client")
    return parser


def client_config(name: str) -> dict[str, object]:
    """An ``mcpServers`` entry that launches this installation by absolute path.

    Desktop clients do not start servers with the user's shell PATH, so a bare ``fal-flux-mcp`` often
    is "command not found" there; the interpreter's absolute path always works.
    """
    return {
        "mcpServers": {
            name: {
                "command": sys.executable,
                "args": ["-m", "fal_flux_mcp", "serve"],
                "env": {
                    "FAL_KEY": "<your fal key, key_id:key_secret, from fal.ai/dashboard/keys>",
                    "FLUX_MCP_ALLOWED_DIRS": str(Path.home() / "Pictures"),
                },
            }
        }
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fal-flux-mcp`` console script."""
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    if command == "emulator":
        from fal_flux_mcp.emulator import serve
        from fal_flux_mcp.emulator._config import config_from_arguments

        _configure_logging("INFO")
        serve(host=args.host, port=args.port, config=config_from_arguments(args))
        return 0
    if command == "demo":
        from fal_flux_mcp._demo import run_demo

        _configure_logging("WARNING")
        return run_demo(
            prompt=args.prompt, model=args.model, aspect_ratio=args.aspect_ratio, output_dir=args.output_dir
        )

    from fal_flux_mcp._config_check import check_config

    check = check_config(create_folders=command == "serve")
    if command == "config":
        for line in check.problems + check.warnings:
            _say(f"warning: {line}")
        print(json.dumps(client_config(args.name), indent=2))
        return 0
    if check.problems:
        count = len(check.problems)
        _say(
            f"not starting: {count} problem{'s' * (count != 1)} in the settings "
            "(environment variables; see fal-flux-mcp --help):"
        )
        for problem in check.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    for warning in check.warnings:
        _say(f"warning: {warning}")
    _configure_logging(check.settings.log_level)
    if command == "gallery":
        from fal_flux_mcp.gallery._command import run_gallery

        return run_gallery(check.settings, port=args.port, open_browser=not args.no_browser)
    return _serve(check.settings, getattr(args, "transport", "stdio"), args)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request URL at INFO, and a signed upload URL carries its credential in the query.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _serve(settings: Settings, transport: str, args: argparse.Namespace) -> int:
    """Serve until stopped. Ctrl-C and SIGTERM (how MCP clients stop a server) are a clean stop, exit 0."""
    import anyio

    from fal_flux_mcp.server import UnsafeBindError, build_server, serve_http
    from fal_flux_mcp.server._journal import JournalError, open_journal
    from fal_flux_mcp.server._stdio import run_stdio

    if settings.database_url is not None:  # an unreachable database (or newer schema) stops it, in words
        try:
            open_journal(settings).close()
        except JournalError as exc:
            _say(f"not starting: {exc}")
            return 2
    server = build_server(settings)
    try:
        if transport == "stdio":
            stopper = _StdioStop(server)
            signal.signal(signal.SIGINT, stopper.on_signal)
            signal.signal(signal.SIGTERM, stopper.on_signal)
            _say("serving MCP over stdio (for the MCP client that started it); Ctrl-C stops it")
            anyio.run(run_stdio, server)  # the SDK's stdio, plus answers to malformed JSON-RPC lines
        else:
            # uvicorn turns SIGINT into an orderly shutdown, then re-raises it (a KeyboardInterrupt,
            # ended below); SIGTERM, which it would re-raise as a kill, takes the same way.
            signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
            try:
                _announce_http(settings, transport, args.host, args.port)
                serve_http(server, transport, host=args.host, port=args.port)  # type: ignore[arg-type]
            except UnsafeBindError as exc:
                _say(str(exc))
                return 2
    except KeyboardInterrupt:
        pass
    _say_stopped()
    return 0


class _StdioStop:
    """Stops a stdio server at the first SIGINT or SIGTERM, as promptly as when the client closes stdin.

    The SDK reads stdin in a worker thread that a cancellation cannot interrupt: asyncio's own Ctrl-C
    handling cancels the server and then waits for that read, i.e. for the client to send a line or
    close the pipe, and a person at a terminal presses Ctrl-C twice and gets a traceback. Here the
    signal cancels the server; once its lifespan has closed the job journal and the fal client,
    nothing is left but that read, and the process exits without waiting for it.
    """

    #: Upper bound on the orderly part; it normally takes milliseconds.
    CLEANUP_SECONDS = 10.0

    def __init__(self, server: MCPServer[Any]) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._finished = threading.Event()
        self._stopping = False
        lowlevel = server._lowlevel_server  # what every stdio runner drives; the SDK has no public hook
        inner = lowlevel.lifespan

        @contextlib.asynccontextmanager
        async def observed(app: Any) -> AsyncIterator[Any]:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            try:
                async with inner(app) as state:
                    yield state
            finally:
                self._finished.set()

        lowlevel.lifespan = observed

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The SIGINT/SIGTERM handler: cancel the server, then exit once it has cleaned up."""
        if self._stopping or self._loop is None or self._task is None:
            _exit_now()  # a second signal, or one before anything was opened: nothing to wait for
        self._stopping = True
        self._loop.call_soon_threadsafe(self._task.cancel)
        threading.Thread(target=self._exit_when_clean, name="fal-flux-mcp-stop", daemon=True).start()

    def _exit_when_clean(self) -> None:
        if not self._finished.wait(self.CLEANUP_SECONDS):
            _say(f"the shutdown took over {self.CLEANUP_SECONDS:g} s; stopping anyway")
        _exit_now()


def _exit_now() -> NoReturn:
    """Leave with exit code 0 without joining the thread blocked on stdin (flushing what was said)."""
    _say_stopped()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


_stopped_said = threading.Lock()


def _say_stopped() -> None:
    if _stopped_said.acquire(blocking=False):  # once, whichever of the ways out comes first
        _say("stopped")


def _announce_http(settings: Settings, transport: str, host: str, port: int) -> None:
    """Where to connect, and whether a token is needed: the first thing a person starting it wants."""
    from fal_flux_mcp.server._http import is_loopback

    token = settings.http_token is not None and bool(settings.http_token.get_secret_value())
    if not token and not settings.oauth and not is_loopback(host):
        return  # serve_http refuses this bind, with the reason: announcing an address would be a lie
    display = f"[{host}]" if ":" in host else host
    path = "/sse" if transport == "sse" else "/mcp"
    if settings.oauth:
        auth = f"OAuth: a JWT from {settings.oauth_issuer} for audience {settings.oauth_audience} is required"
    elif token:
        auth = "a bearer token (FLUX_MCP_HTTP_TOKEN) is required"
    else:
        auth = "no token required (loopback only)"
    _say(f"serving MCP over {transport} at http://{display}:{port}{path}; {auth}; Ctrl-C stops it")


def _say(message: str) -> None:
    print(f"fal-flux-mcp: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
