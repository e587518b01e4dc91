"""Getting the image path ready while nobody waits: imports, codecs, and the allocator's arenas.

The server starts without Pillow or the HTTP stack, so that a client sees its tools as fast as a bare
MCP server's. Loaded on demand, they would instead land on the first finished job: Pillow, its JPEG
codec and the fal client cost the first result about 100 ms more than later ones. ``warm_up`` loads
them in a worker thread once the client has its tools listed, before any job can finish.

It also caps glibc's malloc arenas. Each thread that decodes images would otherwise get an arena of its
own, up to eight per core, and the memory freed in them is rarely returned: two hundred jobs finishing
together left the server at several times its working size. Two arenas cost no measurable speed here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import sys

logger = logging.getLogger("fal_flux_mcp.server")

#: glibc's ``mallopt`` parameter for the most arenas malloc may create (malloc.h: ``M_ARENA_MAX``).
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads not yet started; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False


def warm_up() -> None:
    """Import and exercise what the first finished job needs. Blocking: run it in a worker thread."""
    limit_malloc_arenas()
    from PIL import Image

    import fal_flux_mcp.fal  # noqa: F401 (the HTTP stack, for the first submit)
    from fal_flux_mcp.server._images import make_preview

    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), (200, 120, 40)).save(buffer, format="JPEG")
    make_preview(buffer.getvalue(), max_edge=16, max_bytes=10_000)  # JPEG decode, draft, resize, encode
    logger.debug("image path warmed up")
