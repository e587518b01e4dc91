"""``python -m fal_flux_mcp``: the same as the ``fal-flux-mcp`` command."""

import sys

from fal_flux_mcp._cli import main

sys.exit(main())
