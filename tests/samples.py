"""Small real images for tests (what a user's photo would be, made in memory), and waiting for saved ones."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
from PIL import Image


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    """A solid-colour image of ``size`` encoded as ``fmt`` (any format Pillow writes)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


async def saved_images(folder: Path, seconds: float = 10) -> list[Path]:
    """The images saved in ``folder``, waiting (bounded) until there is at least one."""
    with anyio.fail_after(seconds):
        while not (folder.is_dir() and (found := sorted(folder.glob("*.jpg")))):
            await anyio.sleep(0.02)
    return found
