"""Edits that visibly derive from their input, as an edit model's output does.

An edit shows its input image with the instruction as a caption; a multi-image edit tiles its inputs;
a Fill repaints exactly the mask's white part and leaves the rest untouched (but for the caption band
along the bottom, the emulator's stamp on every image). Inputs are read where
the emulator has them (its own files, data URIs) or fetched; an input on the emulator's storage that
is gone fails the request with a 422, as a fal app fails on a URL it cannot download. An input the
emulator cannot reach at all (no internet in tests) is drawn as a placeholder rather than failing.
Rendering is blocking and meant to run off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
from PIL import Image, ImageDraw, ImageFont, ImageOps

from fal_flux_mcp.emulator._storage import FileStore
from fal_flux_mcp.models import FalInput

_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_FETCH_SECONDS = 10.0
_MAX_INPUT_BYTES = 50 * 1024 * 1024
#: The message fal's apps give for an input they cannot download (wording not confirmed by fal's docs).
_DOWNLOAD_FAILED = "Failed to download the file. Please check if the URL is accessible."


class InputRejected(Exception):
    """The request's input cannot be used; ``errors`` are the 422 ``detail`` entries to answer with."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


@dataclass(frozen=True, slots=True)
class EditInputs:
    """The decoded input images of an edit (None: unreachable, drawn as a placeholder) and its mask."""

    images: list[bytes | None]
    mask: bytes | None = None

    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of each readable input, the mask last, for sizing and billing."""
        found = [_size(data) for data in (*self.images, self.mask) if data is not None]
        return [size for size in found if size is not None]


async def load_inputs(
    model_input: FalInput, origin: str, files: FileStore, http: httpx.AsyncClient
) -> EditInputs:
    """The input images and mask of ``model_input``; ``InputRejected`` for one this emulator (at
    ``origin``) no longer keeps, or one that answers an error."""
    named: list[tuple[str, str]] = [
        (f"image_urls.{index}", url)
        for index, url in enumerate(getattr(model_input, "image_urls", None) or [])
    ]
    if getattr(model_input, "image_url", None):
        named.append(("image_url", model_input.image_url))  # type: ignore[attr-defined]
    images = [await _load(field, url, origin, files, http) for field, url in named]
    mask_url = getattr(model_input, "mask_url", None)
    mask = await _load("mask_url", mask_url, origin, files, http) if mask_url else None
    return EditInputs(images, mask)


async def _load(field: str, url: str, origin: str, files: FileStore, http: httpx.AsyncClient) -> bytes | None:
    parts = urlsplit(url)
    if parts.scheme == "data":
        header, _, payload = url.partition(",")
        try:
            return base64.b64decode(payload) if header.endswith(";base64") else unquote_to_bytes(payload)
        except ValueError:
            raise InputRejected([_download_error(field, url)]) from None
    if parts.path.startswith("/files/") and f"{parts.scheme}://{parts.netloc}" == origin:
        stored = files.get(unquote_to_bytes(parts.path[len("/files/") :]).decode())
        if stored is None:
            raise InputRejected([_download_error(field, url)])
        return stored.path.read_bytes()
    try:
        response = await http.get(url, timeout=_FETCH_SECONDS, follow_redirects=True)
    except httpx.HTTPError:
        return None  # unreachable from here (offline): a placeholder stands in
    if response.status_code >= 400:
        raise InputRejected([_download_error(field, url)])
    return response.content[:_MAX_INPUT_BYTES]


def _download_error(field: str, url: str) -> dict[str, Any]:
    return {
        "loc": ["body", *(int(part) if part.isdigit() else part for part in field.split("."))],
        "msg": _DOWNLOAD_FAILED,
        "type": "file_download_error",
        "input": url,
    }


def mask_mismatch(inputs: EditInputs) -> list[dict[str, Any]] | None:
    """The 422 entries for a mask whose size differs from its image's (Fill needs them equal)."""
    if inputs.mask is None or not inputs.images or inputs.images[0] is None:
        return None
    image, mask = _size(inputs.images[0]), _size(inputs.mask)
    if image is None or mask is None or image == mask:
        return None
    return [
        {
            "loc": ["body", "mask_url"],
            "msg": f"The mask ({mask[0]}x{mask[1]}) must have the same dimensions as the image "
            f"({image[0]}x{image[1]}).",
            "type": "value_error",
            "input": None,
        }
    ]


def render_edit(
    prompt: str,
    seed: int,
    inputs: EditInputs,
    width: int,
    height: int,
    output_format: str,
    black: bool = False,
) -> bytes:
    """The encoded edit: the input (or the inputs tiled) at the output size, changed and captioned."""
    if black:
        return _encode(Image.new("RGB", (width, height)), output_format)
    rng = random.Random(hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest())
    base = _tile([_open(data) for data in inputs.images], width, height)
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    if inputs.mask is not None:
        mask_image = _open(inputs.mask)
        mask = (mask_image or Image.new("L", (width, height), 255)).convert("L").resize((width, height))
        mask = mask.point(lambda value: 255 if value >= 128 else 0)
        edited = Image.composite(_stripes(colour, width, height), base, mask)
    else:
        # A visible, seeded change over the whole picture: the instruction "applied".
        edited = Image.blend(base, Image.new("RGB", (width, height), colour), 0.25)
    _caption(edited, f"edit: {prompt[:180]}  [seed {seed}]")
    return _encode(edited, output_format)


def _tile(images: Sequence[Image.Image | None], width: int, height: int) -> Image.Image:
    """The inputs in a grid filling ``width`` x ``height``; one input fills it all."""
    canvas = Image.new("RGB", (width, height), (40, 40, 40))
    count = max(1, len(images))
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_w, cell_h = max(1, width // columns), max(1, height // rows)
    for index in range(count):
        image = images[index] if index < len(images) else None
        cell = _placeholder(cell_w, cell_h) if image is None else ImageOps.fit(image, (cell_w, cell_h))
        canvas.paste(cell, ((index % columns) * cell_w, (index // columns) * cell_h))
    return canvas


def _stripes(colour: tuple[int, int, int], width: int, height: int) -> Image.Image:
    layer = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(layer)
    step = max(8, min(width, height) // 16)
    light = tuple(min(255, c + 80) for c in colour)
    for offset in range(-height, width, step * 2):
        draw.line([(offset, 0), (offset + height, height)], fill=light, width=max(2, step // 2))
    return layer


def _placeholder(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.line([(0, 0), (width, height)], fill=(90, 90, 90), width=3)
    draw.line([(0, height), (width, 0)], fill=(90, 90, 90), width=3)
    return image


def _caption(image: Image.Image, text: str) -> None:
    width, height = image.size
    band = max(14, min(width, height) // 24)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height - band, width, height), fill="black")
    draw.text((band // 3, height - band + band // 6), text, fill="white", font=_font(band * 2 // 3))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _open(data: bytes | None) -> Image.Image | None:
    if data is None:
        return None
    try:
        image = Image.open(io.BytesIO(data))
        return ImageOps.exif_transpose(image).convert("RGB")
    except Exception:  # not an image fal could read either: drawn as a placeholder
        return None


def _size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not an image: no size to go by
        return None


def _encode(image: Image.Image, output_format: str) -> bytes:
    buffer = io.BytesIO()
    pil_format = _FORMATS[output_format]
    if pil_format == "PNG":
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, pil_format, quality=90)
    return buffer.getvalue()
