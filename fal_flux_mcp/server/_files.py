"""Generated images on the user's disk: what each file is called, and writing it without clobbering.

Files must never be overwritten or land somewhere surprising, the complaint users of other image
servers make most. So images are only written under an absolute folder, each file is named after what
it shows, and an existing file is never replaced, even when two saves race for the same name.

A download is written into a hidden ``.part`` file in the output folder as it arrives
(``partial_file``), then published under its final name (``publish``): no image is ever held whole in
memory, and a reader never sees a half-written image under its final name. ``save_image`` does both
for bytes already in memory. These functions block; async callers run them in a worker thread.
"""

from __future__ import annotations

import errno
import filecmp
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fal_flux_mcp.server._images import IMAGE_EXTENSIONS, sniff_content_type

_SLUG_MAX = 40
_MODEL_MAX = 40
_MAX_NAME_ATTEMPTS = 10_000


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


@dataclass(frozen=True, slots=True)
class ImageName:
    """What one image's file is called: ``YYYYMMDD-HHMMSS_<prompt>_<model>_<seed>_<index>.<ext>``.

    It sorts by time and says what the file is. The timestamp is the user's local time, because that is
    what they will look for in a file browser; ``created_at`` lets all images of one job share it. The
    job id is not part of the name (fal's request ids are long and say nothing to a person).
    """

    prompt: str
    endpoint_id: str
    seed: int | None
    index: int
    created_at: datetime

    @property
    def stem(self) -> str:
        stamp = self.created_at.astimezone().strftime("%Y%m%d-%H%M%S")
        seed_part = "noseed" if self.seed is None else str(self.seed)
        slug = slugify(self.prompt) or "image"
        return f"{stamp}_{slug}_{model_short_name(self.endpoint_id)}_{seed_part}_{self.index}"


def output_folder(output_dir: Path) -> Path:
    """``output_dir``, created if missing; a relative one is refused rather than guessed at."""
    directory = output_dir.expanduser()
    if not directory.is_absolute():
        raise ValueError(
            f"the output directory {str(output_dir)!r} is relative; it would resolve against the server's "
            "working directory (often / or an app folder when a desktop client starts it). Set "
            "FLUX_MCP_OUTPUT_DIR to an absolute path."
        )
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def partial_file(directory: Path, name: ImageName, job_id: str) -> Path:
    """The hidden file an image is written into before it is published.

    One name per (job, image): a save cut short by a crash leaves a file that the next save of the same
    image replaces, instead of one more hidden file for good.
    """
    token = hashlib.sha256(f"{job_id}\0{name.index}".encode()).hexdigest()[:16]
    return directory / f".{name.stem[:60]}.{token}.part"


def extension_for(head: bytes, content_type: str) -> str:
    """The file extension: the bytes' real type when recognisable (``head``: the first 32), else the label."""
    declared = content_type.split(";", 1)[0].strip().lower()
    if declared == "image/jpg":
        declared = "image/jpeg"
    return IMAGE_EXTENSIONS.get(sniff_content_type(head) or declared, "bin")


def publish(partial: Path, directory: Path, name: ImageName, content_type: str, job_id: str) -> Path:
    """Give the finished ``partial`` file its final name, never replacing a file; returns the path.

    The file is synced first, so a name never points at bytes still in flight to the disk. It is then
    hard-linked to the final name, which fails instead of clobbering if the name is taken (then ``-1``,
    ``-2``, ... is tried). Saving is idempotent per image: a file of that name that already holds exactly
    these bytes (this image, saved before a crash kept the journal from recording it) is reused. Where
    hard links are unsupported (FAT, some network shares) the name is reserved with an exclusive create
    and the partial file renamed over it. The partial file is left for the caller to remove.
    """
    with open(partial, "rb") as file:
        os.fsync(file.fileno())
        head = file.read(32)
    if not head:
        raise ValueError(f"job {job_id}: image {name.index} is empty; nothing to save")
    stem, extension = name.stem, extension_for(head, content_type)
    for attempt in range(_MAX_NAME_ATTEMPTS):
        target = directory / (f"{stem}.{extension}" if attempt == 0 else f"{stem}-{attempt}.{extension}")
        try:
            _link_without_clobbering(partial, target)
        except FileExistsError:
            if filecmp.cmp(partial, target, shallow=False):  # this very image, saved before a crash
                return target.absolute()
            continue
        return target.absolute()
    raise FileExistsError(
        errno.EEXIST, f"job {job_id}: {_MAX_NAME_ATTEMPTS} files named {stem}-N.{extension} already exist"
    )


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
    """Write one image held in memory under ``output_dir`` (see ``publish``); returns the absolute path.

    ``index`` is written as given (the caller's numbering of the job's images). The extension follows
    the bytes when they are a recognisable image, else ``content_type``.
    """
    if not data:
        raise ValueError(f"job {job_id}: image {index} is empty; nothing to save")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    directory = output_folder(output_dir)
    name = ImageName(prompt, endpoint_id, seed, index, created_at or datetime.now(UTC))
    partial = partial_file(directory, name, job_id)
    try:
        partial.unlink(missing_ok=True)
        # os.open with mode 0o666 lets the user's umask decide permissions, as for any file they create.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return publish(partial, directory, name, content_type, job_id)
    finally:
        partial.unlink(missing_ok=True)


def _link_without_clobbering(partial: Path, target: Path) -> None:
    try:
        os.link(partial, target)
        return
    except FileExistsError:
        raise
    except (OSError, NotImplementedError, AttributeError):
        pass  # no hard links here; fall back to reserving the name
    reservation = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # FileExistsError if taken
    os.close(reservation)
    try:
        os.replace(partial, target)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
