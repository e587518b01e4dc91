"""Saving generated images where users can find them, and previews small enough for MCP clients.

Two user complaints shape this module. Files must never be overwritten or land somewhere surprising, so
``save_image`` only writes under an absolute directory, names each file after what it shows, and never
replaces an existing file, even when two calls race for the same name. And a tool result over 1 MB is
rejected by clients ("result exceeds maximum length of 1048576"), so previews are JPEGs squeezed to a byte
budget that ``preview_budget`` derives from that cap.

Decoding and encoding are CPU-bound: async callers use ``make_preview_async`` (and run ``save_image`` in a
worker thread, e.g. ``anyio.to_thread.run_sync``, since writing megabytes blocks too).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

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

_SLUG_MAX = 40
_MODEL_MAX = 40
_MAX_NAME_ATTEMPTS = 10_000
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


def slugify(text: str, max_length: int = _SLUG_MAX) -> str:
    """A lowercase ASCII ``a-z0-9-`` slug of ``text``, cut at a word boundary; ``""`` if nothing is left.

    Only the POSIX portable file name characters survive, so the name is valid on Windows, macOS and
    Linux, in zip files and in URLs, and can never contain a path separator or ``..``.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > max_length:
        cut = slug[:max_length]
        boundary = cut.rfind("-")
        slug = cut[:boundary] if boundary >= max_length // 2 else cut
    return slug.strip("-")


def model_short_name(endpoint_id: str) -> str:
    """``fal-ai/flux-pro/v1.1-ultra`` -> ``flux-pro-v1.1-ultra``: the part of the id that names the model."""
    name = endpoint_id.strip().lower().removeprefix("fal-ai/").replace("/", "-")
    name = re.sub(r"[^a-z0-9.-]+", "-", name)
    name = re.sub(r"\.{2,}", ".", re.sub(r"-{2,}", "-", name))
    return name[:_MODEL_MAX].strip("-.") or "model"


def image_file_name(
    *, prompt: str, endpoint_id: str, seed: int | None, index: int, extension: str, created_at: datetime
) -> str:
    """``YYYYMMDD-HHMMSS_<prompt>_<model>_<seed>_<index>.<ext>``: sorts by time and says what the file is.

    The timestamp is the user's local time, because that is what they will look for in a file browser.
    """
    stamp = created_at.astimezone().strftime("%Y%m%d-%H%M%S")
    seed_part = "noseed" if seed is None else str(seed)
    return f"{stamp}_{slugify(prompt) or 'image'}_{model_short_name(endpoint_id)}_{seed_part}_{index}.{extension}"


def save_image(
    data: bytes,
    *,
    output_dir: Path,
    job_id: str,
    index: int,
    prompt: str,
    endpoint_id: str,
    seed: int | None,
    content_type: str,
    created_at: datetime | None = None,
) -> Path:
    """Write one generated image under ``output_dir`` without ever replacing an existing file.

    The bytes go to a hidden temporary file in the same directory first and are then hard-linked to the
    final name, which fails instead of clobbering if the name is taken (then ``-1``, ``-2``, ... is tried).
    A reader therefore never sees a half-written image under its final name, and two concurrent saves of
    the same name both survive. Saving is idempotent per image: a file of that name that already holds
    exactly these bytes (the same image, saved before a crash kept the journal from recording it) is
    reused, not copied again. Where hard links are unsupported (FAT, some network shares) the name is
    reserved with an exclusive create and the temporary file is renamed over that reservation.

    ``index`` is written as given (the caller's numbering of the job's images). ``created_at`` (default:
    now) lets all images of one job share a timestamp. The extension follows the bytes when they are a
    recognisable image, else ``content_type``. ``job_id`` is not part of the name (fal's request ids are long
    and say nothing to a person); it only appears in errors. Returns the absolute path written.
    """
    if not data:
        raise ValueError(f"job {job_id}: image {index} is empty; nothing to save")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    directory = output_dir.expanduser()
    if not directory.is_absolute():
        raise ValueError(
            f"the output directory {str(output_dir)!r} is relative; it would resolve against the server's "
            "working directory (often / or an app folder when a desktop client starts it). Set "
            "FLUX_MCP_OUTPUT_DIR to an absolute path."
        )
    directory.mkdir(parents=True, exist_ok=True)
    name = image_file_name(
        prompt=prompt,
        endpoint_id=endpoint_id,
        seed=seed,
        index=index,
        extension=_extension_for(data, content_type),
        created_at=created_at or datetime.now(UTC),
    )
    stem, _, extension = name.rpartition(".")
    # One temporary name per (job, image): a save cut short by a crash leaves a file that the next save
    # of the same image replaces, instead of one more hidden file for good.
    token = hashlib.sha256(f"{job_id}\0{index}".encode()).hexdigest()[:16]
    temporary = directory / f".{stem[:60]}.{token}.part"
    try:
        temporary.unlink(missing_ok=True)
        _write_new_file(temporary, data)
        for attempt in range(_MAX_NAME_ATTEMPTS):
            target = directory / (f"{stem}.{extension}" if attempt == 0 else f"{stem}-{attempt}.{extension}")
            try:
                _publish_without_clobbering(temporary, target)
            except FileExistsError:
                if _holds(target, data):  # this very image, saved before a crash: reuse it
                    return target.absolute()
                continue
            return target.absolute()
        raise FileExistsError(
            errno.EEXIST, f"job {job_id}: {_MAX_NAME_ATTEMPTS} files named {stem}-N.{extension} already exist"
        )
    finally:
        temporary.unlink(missing_ok=True)


def _holds(path: Path, data: bytes) -> bool:
    """Whether the file at ``path`` holds exactly ``data`` (read only when the sizes match)."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def _extension_for(data: bytes, content_type: str) -> str:
    declared = content_type.split(";", 1)[0].strip().lower()
    if declared == "image/jpg":
        declared = "image/jpeg"
    return IMAGE_EXTENSIONS.get(sniff_content_type(data) or declared, "bin")


def _write_new_file(path: Path, data: bytes) -> None:
    # os.open with mode 0o666 lets the user's umask decide permissions, as for any file they create.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _publish_without_clobbering(temporary: Path, target: Path) -> None:
    try:
        os.link(temporary, target)
        return
    except FileExistsError:
        raise
    except (OSError, NotImplementedError, AttributeError):
        pass  # no hard links here; fall back to reserving the name
    reservation = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # FileExistsError if taken
    os.close(reservation)
    try:
        os.replace(temporary, target)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _open_image(data: bytes) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not an image Pillow can read ({len(data)} bytes): {exc}") from exc


def _orientation(image: Image.Image) -> int:
    # Only look when the EXIF block is already parsed: for PNG, getexif() would decode the whole image.
    if "exif" not in image.info:
        return 1
    value = image.getexif().get(_EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def image_dimensions(data: bytes) -> tuple[int, int, str]:
    """``(width, height, content_type)`` as displayed, from the header only, for when fal omits them.

    Pillow opens lazily, so this reads the header rather than decoding megapixels. EXIF rotation by 90°
    swaps width and height, matching what viewers (and ``make_preview``) show.
    """
    from PIL import Image

    with _open_image(data) as image:
        width, height = image.size
        if _orientation(image) in (5, 6, 7, 8):
            width, height = height, width
        content_type = Image.MIME.get(image.format or "") or sniff_content_type(data)
    return width, height, content_type or "application/octet-stream"


def make_preview(data: bytes, *, max_edge: int = 1024, max_bytes: int) -> Preview:
    """A JPEG of ``data`` no larger than ``max_edge`` pixels on its longest side and ``max_bytes`` bytes.

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
        with _open_image(data) as image:
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
        current = rgb.resize(size, Image.Resampling.LANCZOS)


async def make_preview_async(
    data: bytes, *, max_edge: int = 1024, max_bytes: int, limiter: anyio.CapacityLimiter | None = None
) -> Preview:
    """``make_preview`` in a worker thread, so decoding megapixels does not stall the event loop.

    Pass a ``limiter`` of about one slot per core: 50 previews at once then use hundreds of MB less
    and finish no later than with a thread each.
    """
    return await anyio.to_thread.run_sync(
        functools.partial(make_preview, data, max_edge=max_edge, max_bytes=max_bytes), limiter=limiter
    )


def _downscaled_rgb(image: Image.Image, max_edge: int) -> Image.Image:
    from PIL import Image

    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    work = image
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        # Palette and exotic modes resize badly (palette resizing is nearest-neighbour); convert first.
        work = image.convert("RGBA" if has_alpha else "RGB")
    elif has_alpha and image.mode in ("RGB", "L"):
        work = image.convert("RGBA")
    # thumbnail() never upscales, keeps the aspect ratio, and lets JPEG decode at a reduced scale.
    # BICUBIC after a 1/2-scale JPEG decode looks as good as LANCZOS at a preview size, for 70% of the time.
    work.thumbnail((max_edge, max_edge), Image.Resampling.BICUBIC, reducing_gap=1.0)
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
