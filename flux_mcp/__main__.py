"""``python -m flux_mcp``: the same as the ``flux-mcp`` command."""

import sys

from flux_mcp._cli import main

sys.exit(main())
