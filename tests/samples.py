"""Small real images for tests: what a user's photo would be, made in memory."""

from __future__ import annotations

import io

from PIL import Image


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    """A solid-colour image of ``size`` encoded as ``fmt`` (any format Pillow writes)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()
