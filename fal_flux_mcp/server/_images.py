"""Image bytes: what type they are, how big they show, and previews small enough for MCP clients.

A tool result over 1 MB is rejected by clients ("result exceeds maximum length of 1048576"), so
previews are JPEGs squeezed to a byte budget that ``preview_budget`` derives from that cap.

Previews are the server's main CPU cost, so they are made at the floor: a JPEG is decoded at the
smallest DCT scale (1/2, 1/4 or 1/8) whose size still covers the preview, then resampled once. A
2752x1536 ultra image is decoded at 1376x768, a quarter of its pixels. Decoding and encoding are
CPU-bound: async callers use ``make_preview_async``.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from PIL import Image

# Pillow is imported where pixels are touched, not here: the server then starts (and answers its
# first tools/list) without loading it.

#: The image types fal accepts as inputs and produces as outputs, with the file extension fal-flux-mcp uses.
IMAGE_EXTENSIONS: dict[str, str] = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
}

#: MCP clients reject a tool result longer than this many characters.
RESULT_LIMIT_BYTES = 1_048_576

_PREVIEW_QUALITIES = (85, 75, 65, 55, 45, 35)
_PREVIEW_MIN_EDGE = 16
_EXIF_ORIENTATION = 0x0112
#: EXIF orientation -> the ``Image.Transpose`` member that undoes it.
_ORIENTATION_FIXES: dict[int, str] = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


@dataclass(frozen=True, slots=True)
class Preview:
    """A JPEG small enough to inline in a tool result, with the size it shows at."""

    data: bytes
    width: int
    height: int
    mime_type: str = "image/jpeg"


def sniff_content_type(data: bytes) -> str | None:
    """The image type the bytes really are (one of ``IMAGE_EXTENSIONS``), or None.

    Content, not a file name or a server's header, decides: a text file called ``cat.png`` is not an
    image, and a JPEG labelled ``image/png`` should still be saved as ``.jpg``. 32 bytes are enough.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        # An ISO-BMFF file (AVIF, HEIC, MP4, ...): AVIF says so in its major or compatible brands.
        box_end = min(int.from_bytes(data[:4], "big"), len(data))
        brands = [data[8:12]] + [data[i : i + 4] for i in range(16, box_end - 3, 4)]
        if b"avif" in brands or b"avis" in brands:
            return "image/avif"
    return None


#: Bytes, or a file open for reading (read from its current position).
ImageSource = bytes | BinaryIO


def _open_image(source: ImageSource) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    file = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return Image.open(file)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        what = f"{len(source)} bytes" if isinstance(source, bytes) else "the file"
        raise ValueError(f"not an image Pillow can read ({what}): {exc}") from exc


def _orientation(image: Image.Image) -> int:
    # Only look when the EXIF block is already parsed: for PNG, getexif() would decode the whole image.
    if "exif" not in image.info:
        return 1
    value = image.getexif().get(_EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def image_dimensions(source: ImageSource) -> tuple[int, int, str]:
    """``(width, height, content_type)`` as displayed, from the header only, for when fal omits them.

    Pillow opens lazily, so this reads the header rather than decoding megapixels. EXIF rotation by 90°
    swaps width and height, matching what viewers (and ``make_preview``) show.
    """
    from PIL import Image

    with _open_image(source) as image:
        width, height = image.size
        if _orientation(image) in (5, 6, 7, 8):
            width, height = height, width
        content_type = Image.MIME.get(image.format or "")
    if content_type is None and isinstance(source, bytes):
        content_type = sniff_content_type(source)
    return width, height, content_type or "application/octet-stream"


def make_preview(source: ImageSource, *, max_edge: int = 1024, max_bytes: int) -> Preview:
    """A JPEG of ``source`` no larger than ``max_edge`` pixels on its longest side and ``max_bytes`` bytes.

    JPEG because it is the smallest widely displayed format for photographic output. Transparency is
    flattened onto white (JPEG has none, and black would hide dark subjects), EXIF rotation is applied,
    and small images are never upscaled. Quality is lowered first, since that costs less visible detail
    than pixels; only if the lowest quality is still too big is the image shrunk, in proportion to how
    far over budget it was. Raises ``ValueError`` for data Pillow cannot decode or an impossible budget.
    """
    if max_edge < 1:
        raise ValueError(f"max_edge must be >= 1, got {max_edge}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    from PIL import Image

    try:
        with _open_image(source) as image:
            orientation = _orientation(image)
            rgb = _downscaled_rgb(image, max_edge)
    except (OSError, Image.DecompressionBombError) as exc:  # truncated or corrupt pixel data
        raise ValueError(f"could not decode the image for a preview: {exc}") from exc
    if orientation in _ORIENTATION_FIXES:
        rgb = rgb.transpose(Image.Transpose[_ORIENTATION_FIXES[orientation]])

    current = rgb
    while True:
        for quality in _PREVIEW_QUALITIES:
            encoded = _encode_jpeg(current, quality)
            if len(encoded) <= max_bytes:
                return Preview(encoded, current.width, current.height)
        if max(current.size) <= _PREVIEW_MIN_EDGE:
            raise ValueError(f"cannot fit a JPEG preview into {max_bytes} bytes")
        # JPEG size scales roughly with pixel count, so shrink each edge by sqrt(budget / size).
        scale = min(0.9, max(0.5, 0.95 * math.sqrt(max_bytes / len(encoded))))
        size = (max(1, round(current.width * scale)), max(1, round(current.height * scale)))
        current = rgb.resize(size, Image.Resampling.BOX)


async def make_preview_async(
    source: ImageSource, *, max_edge: int = 1024, max_bytes: int, limiter: anyio.CapacityLimiter | None = None
) -> Preview:
    """``make_preview`` in a worker thread, so decoding megapixels does not stall the event loop.

    Pass a ``limiter`` of about one slot per core: more previews at once than cores only add memory
    (each holds a decoded image) and finish no sooner.
    """
    return await anyio.to_thread.run_sync(
        functools.partial(make_preview, source, max_edge=max_edge, max_bytes=max_bytes), limiter=limiter
    )


def preview_size(width: int, height: int, max_edge: int) -> tuple[int, int]:
    """The size of the preview of a ``width`` x ``height`` image: the same shape, never upscaled."""
    scale = min(1.0, max_edge / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _downscaled_rgb(image: Image.Image, max_edge: int) -> Image.Image:
    """The image at its preview size, in RGB, decoded and resampled as little as possible.

    ``draft`` asks libjpeg for the smallest DCT scale that still covers the preview's exact size (not
    a ``max_edge`` square, which for a wide image would rule out every reduced scale). The one resample
    after it is a BOX (area-average) filter: for reductions under 2x it looks like BICUBIC at a preview
    size and costs a third of the time.
    """
    from PIL import Image

    target = preview_size(*image.size, max_edge)
    if image.format == "JPEG" and target != image.size:
        image.draft("RGB", target)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    work = image
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        # Palette and exotic modes resize badly (palette resizing is nearest-neighbour); convert first.
        work = image.convert("RGBA" if has_alpha else "RGB")
    elif has_alpha and image.mode in ("RGB", "L"):
        work = image.convert("RGBA")
    if work.size != target:
        work = work.resize(target, Image.Resampling.BOX)
    if work.mode in ("RGBA", "LA"):
        flattened = Image.new("RGB", work.size, (255, 255, 255))
        rgba = work.convert("RGBA")
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        return flattened
    return work.convert("RGB")


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def preview_budget(num_images: int, total_bytes: int = 700_000) -> int:
    """Bytes each of ``num_images`` previews may use so the whole tool result stays under 1 MB.

    The client limit is 1,048,576 characters of serialized result. An image travels as base64, which is
    4/3 of its size: 700,000 bytes of previews become at most 933,344 characters (each preview rounds up
    to a whole 4-character group), leaving about 115,000 characters for everything else in the result
    (text blocks, structured content, resource links, JSON quoting). The total is split evenly, so
    4 ultra images get 175,000 bytes each; a 1024-pixel JPEG usually fits that at good quality.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if total_bytes < num_images or math.ceil(total_bytes / 3) * 4 >= RESULT_LIMIT_BYTES:
        raise ValueError(
            f"total_bytes={total_bytes} cannot be split into previews under the 1 MB result limit"
        )
    return total_bytes // num_images
