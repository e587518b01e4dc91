"""A local fal: fal's queue, run and storage protocol on loopback, so fal-flux-mcp runs with no account.

It behaves like fal, quirks included (invalid input accepted at submit and rejected on the result
call, failures reported as COMPLETED, 400 on an early result call...), renders real images of the
sizes fal returns, and has knobs and fault injection for tests::

    from fal_flux_mcp.emulator import Emulator, EmulatorConfig

    with Emulator(EmulatorConfig(job_seconds=0.2)) as emu:
        ...  # FLUX_MCP_FAL_URL=emu.url, FAL_KEY=emu.key

``serve()`` runs it in the foreground (``fal-flux-mcp emulator``, ``python -m fal_flux_mcp.emulator``).
"""

from typing import TYPE_CHECKING

from fal_flux_mcp._lazy import lazy_exports
from fal_flux_mcp.emulator._config import DEFAULT_KEY, EmulatorConfig

if TYPE_CHECKING:
    from fal_flux_mcp.emulator._core import JobInfo
    from fal_flux_mcp.emulator._server import Emulator, serve

# The server (Starlette, uvicorn, Pillow) loads on first use: ``fal-flux-mcp serve`` builds its
# command line from ``_config`` and must not pay for an emulator it does not run.
_LAZY = {
    "Emulator": "fal_flux_mcp.emulator._server",
    "serve": "fal_flux_mcp.emulator._server",
    "JobInfo": "fal_flux_mcp.emulator._core",
}


__getattr__ = lazy_exports(globals(), _LAZY)

__all__ = ["DEFAULT_KEY", "Emulator", "EmulatorConfig", "JobInfo", "serve"]
