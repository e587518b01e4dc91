"""``python -m fal_flux_mcp.emulator``: serve the fal emulator in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys

from fal_flux_mcp.emulator import serve
from fal_flux_mcp.emulator._config import add_arguments, config_from_arguments


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m fal_flux_mcp.emulator",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    serve(args.host, args.port, config_from_arguments(args))


if __name__ == "__main__":
    main()
