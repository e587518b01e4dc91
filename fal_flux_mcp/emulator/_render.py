"""Stand-in images: real JPEG/PNG files of the exact size fal would return, cheap to make.

An image depends only on (prompt, seed, size, format, look), so the same request renders
byte-identical files, as FLUX does with a fixed seed, while a different prompt or seed is visibly
different. The ``flat`` look has a smooth background and solid shapes, which keeps 4-megapixel
encodes in a few tens of milliseconds (PNG included), for tests. Flat areas also decode about twice
as fast as a photograph, which would flatter any benchmark of what a client does with the file: the
``photo`` look adds the texture and grain of a real photo (and a photo's JPEG size, about 3 bits a
pixel at quality 90). Functions here are blocking and meant to run off the event loop.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
from typing import Literal

from PIL import Image, ImageChops, ImageDraw, ImageFont

Look = Literal["flat", "photo"]

_FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp")}


def content_type(output_format: str) -> str:
    """The MIME type fal reports for an ``output_format``."""
    return _FORMATS[output_format][1]


def render(
    prompt: str,
    seed: int,
    width: int,
    height: int,
    output_format: str,
    black: bool = False,
    look: Look = "flat",
) -> bytes:
    """The encoded image for these parameters (the emulator caches it: agents and tests repeat requests)."""
    if black:
        image = Image.new("RGB", (width, height))
    else:
        image = _draw(prompt, seed, width, height)
        if look == "photo":
            image = _photographic(image, seed)
    buffer = io.BytesIO()
    pil_format = _FORMATS[output_format][0]
    if pil_format == "PNG":
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, pil_format, quality=90)
    return buffer.getvalue()


def _draw(prompt: str, seed: int, width: int, height: int) -> Image.Image:
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    rng = random.Random(digest)
    top, bottom = _colour(rng), _colour(rng)
    # A vertical gradient: one column stretched sideways. Pillow resizes without holding the GIL,
    # which keeps the event loop responsive while many images render at once.
    column = Image.new("RGB", (1, height))
    last = max(1, height - 1)
    column.putdata(
        [tuple(a + (b - a) * y // last for a, b in zip(top, bottom, strict=True)) for y in range(height)]
    )
    image = column.resize((width, height), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    outline = max(2, short // 300)
    for index in range(rng.randint(6, 11)):
        x, y = rng.randrange(width), rng.randrange(height)
        radius = rng.randint(short // 14, short // 4)
        fill = _colour(rng)
        shape = rng.choice(("ellipse", "rectangle", "triangle")) if index else "ellipse"
        if shape == "ellipse":
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius), fill=fill, outline="white", width=outline
            )
        elif shape == "rectangle":
            draw.rectangle((x - radius, y - radius // 2, x + radius, y + radius // 2), fill=fill)
        else:
            draw.polygon([(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)], fill=fill)
    band = max(14, short // 24)
    draw.rectangle((0, height - band, width, height), fill="black")
    caption = f"{prompt[:200]}  [seed {seed}]"
    draw.text((band // 3, height - band + band // 6), caption, fill="white", font=_font(band * 2 // 3))
    return image


def _photographic(image: Image.Image, seed: int) -> Image.Image:
    """``image`` with a photo's texture: soft blotches of light and shade, then per-channel grain.

    The grain is independent per channel (sensor noise has colour), which is what makes a photo's
    JPEG big and slow to decode; the mottling gives the low-frequency detail smooth gradients lack.
    Noise comes from a seeded ``random.Random``, so renders stay the same across processes, and is
    shaped by lookup tables in C, so a 4-megapixel image takes tens of milliseconds.
    """
    width, height = image.size
    rng = random.Random(seed)
    small = (max(1, width // 24), max(1, height // 24))
    mottle = _noise(rng, small, 40).resize((width, height), Image.Resampling.BICUBIC)
    textured = ImageChops.add(image, Image.merge("RGB", [mottle] * 3), scale=1.0, offset=-128)
    grain = Image.merge("RGB", [_noise(rng, (width, height), 14) for _ in range(3)])
    return ImageChops.add(textured, grain, scale=1.0, offset=-128)


def _noise(rng: random.Random, size: tuple[int, int], amplitude: int) -> Image.Image:
    """A plane of uniform noise in ``128 ± amplitude``."""
    plane = Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))
    return plane.point([128 - amplitude + value * 2 * amplitude // 255 for value in range(256)])


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()
