"""The ``fal-flux-mcp`` command: serve the MCP server, run the local fal emulator, or run the demo.

On stdio, stdout belongs to the protocol: everything this module prints for people goes to stderr,
except the demo's report, which is not an MCP server.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fal_flux_mcp._version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fal-flux-mcp",
        description="fal.ai FLUX image models as MCP tools. With no command, serves MCP on stdio.",
    )
    parser.add_argument("--version", action="version", version=f"fal-flux-mcp {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="serve the MCP server (default: stdio)")
    serve.add_argument("--transport", choices=["stdio", "sse", "streamable-http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")

    emulator = commands.add_parser("emulator", help="run the local fal emulator (no account, no network)")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8765)
    emulator.add_argument("--job-seconds", type=float, default=None, help="how long each job runs")

    demo = commands.add_parser("demo", help="make an image end to end, offline, through a real MCP client")
    demo.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    demo.add_argument("--model", default="fal-ai/flux-pro/v1.1-ultra")
    demo.add_argument("--aspect-ratio", default="16:9")
    demo.add_argument(
        "--output-dir", type=Path, default=None, help="where to save (default: FLUX_MCP_OUTPUT_DIR)"
    )
    config = commands.add_parser("config", help="print an mcpServers entry with absolute paths, for a client")
    config.add_argument("--name", default="flux", help="server name in the client (default flux)")
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
    from fal_flux_mcp.settings import Settings

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO, and a signed upload URL carries its credential in the query.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = args.command or "serve"
    if command == "config":
        print(json.dumps(client_config(args.name), indent=2))
        return 0
    if command == "emulator":
        from fal_flux_mcp.emulator import EmulatorConfig, serve

        config = (
            EmulatorConfig() if args.job_seconds is None else EmulatorConfig(job_seconds=args.job_seconds)
        )
        serve(host=args.host, port=args.port, config=config)
        return 0
    if command == "demo":
        from fal_flux_mcp._demo import run_demo

        return run_demo(
            prompt=args.prompt,
            model=args.model,
            aspect_ratio=args.aspect_ratio,
            output_dir=args.output_dir or settings.output_dir,
        )

    from fal_flux_mcp.server import UnsafeBindError, build_server, serve_http

    server = build_server(settings)
    transport = getattr(args, "transport", "stdio")
    if transport == "stdio":
        server.run("stdio")
        return 0
    try:
        serve_http(server, transport, host=args.host, port=args.port)
    except UnsafeBindError as exc:
        print(f"fal-flux-mcp: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
