"""``python -m fal_flux_mcp.emulator``: serve the fal emulator in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys

from fal_flux_mcp.emulator import EmulatorConfig, serve


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m fal_flux_mcp.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--job-seconds", type=float, default=None, help="time each job spends in progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    config = EmulatorConfig()
    if args.job_seconds is not None:
        config.job_seconds = args.job_seconds
    serve(args.host, args.port, config)


if __name__ == "__main__":
    main()
