"""What ``upload_file`` may read: local images inside the allowed folders, or image bytes sent inline.

An LLM chooses the path, and an LLM can be talked into anything by a prompt or a web page, so a local path
is only honoured if the file it *really* is (after ``~``, ``..`` and every symlink are resolved) lies in
a folder the user allowed: ``FLUX_MCP_ALLOWED_DIRS`` or an MCP root their client shares. The file's
content, never its name, must be an image fal accepts. Every refusal says what was wrong and what to do,
because the LLM reading it can usually fix the call or tell the user which setting to change; a refusal
for a path outside the allowed folders never reveals whether that path exists.

The file is opened once, by the check, and uploaded from that descriptor: a name can be repointed (a
symlink to an SSH key swapped in) while the upload waits on fal, an open file cannot. The final
component is opened without following symlinks, and the open file must be the one checked, still inside
an allowed folder, and (unless allowed) have a single hard link, since a hard link is a second name
that no path check can tell from the first.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import io
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.lowlevel

from fal_flux_mcp.server._errors import quoted, reason_of
from fal_flux_mcp.server._file_uris import file_uri_to_path
from fal_flux_mcp.server._images import IMAGE_EXTENSIONS, sniff_content_type

_ACCEPTED = "JPEG, PNG, WebP, GIF or AVIF"
_HEADER_BYTES = 64
_DATA_URI = re.compile(r"^data:(?P<type>[^,;]*)(?P<params>(?:;[^,;]*)*),(?P<payload>.*)$", re.DOTALL | re.I)


class UploadRefused(Exception):
    """``upload_file`` will not send this; the message says why and how to fix it."""


@dataclass(slots=True, eq=False)
class LocalImage:
    """A checked local image, held open: the upload reads this descriptor, never the path again.

    Close it (or use it as a context manager) once the upload is over, whatever its outcome.
    """

    path: Path
    size: int
    content_type: str
    file_name: str
    file: io.FileIO = field(repr=False)

    def fileno(self) -> int:
        """The open descriptor, to upload from by position (``FalClient.upload_from_file``)."""
        return self.file.fileno()

    def close(self) -> None:
        """Close the descriptor; idempotent."""
        self.file.close()

    def __enter__(self) -> LocalImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """Image bytes sent inline, decoded and checked."""

    data: bytes
    content_type: str
    file_name: str


async def open_local_image(
    path: str, allowed_dirs: Sequence[Path], max_bytes: int, *, allow_hard_links: bool = False
) -> LocalImage:
    """``resolve_local_image`` off the event loop; the caller owns (and closes) the open image.

    The check runs to its end even if the caller is cancelled meanwhile, so that the file it opened is
    closed here rather than dropped open.
    """
    check = functools.partial(
        resolve_local_image, path, allowed_dirs, max_bytes, allow_hard_links=allow_hard_links
    )
    with anyio.CancelScope(shield=True):
        image = await anyio.to_thread.run_sync(check)
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        image.close()
        raise
    return image


def resolve_local_image(
    path: str, allowed_dirs: Sequence[Path], max_bytes: int, *, allow_hard_links: bool = False
) -> LocalImage:
    """Check that ``path`` is an image inside ``allowed_dirs`` that fal accepts, or raise ``UploadRefused``.

    Containment is judged on the resolved path against the resolved allowed folders, so neither ``..``
    nor a symlink can lead out of them, while a symlink that stays inside is fine. Relative allowed
    folders are ignored: resolved against the server's working directory they could allow anything.
    A ``file://`` URI is accepted in place of a path, as LLMs often pass those. The image is returned
    open (blocking: run it in a worker thread, as ``open_local_image`` does), for the caller to close.
    """
    roots = _allowed_roots(allowed_dirs)
    if not roots:
        raise UploadRefused(
            "upload_file cannot read local files: no folders are allowed. Ask the user to set "
            f"FLUX_MCP_ALLOWED_DIRS to the absolute folder(s) holding their images (separated by "
            f"'{os.pathsep}') or to share the folder as an MCP root in their client, or pass the image "
            "inline as base64 `data` with a `file_name`."
        )
    where = ", ".join(str(root) for root in roots)
    text = path.strip()
    if not text:
        raise UploadRefused(f"No path was given. Give the absolute path of an image inside {where}.")
    if "\x00" in text:
        raise UploadRefused("The path contains a NUL character, which no file name can. Check the path.")
    if text.lower().startswith("file:"):
        converted = file_uri_to_path(text, windows=os.name == "nt")
        if converted is None:
            raise UploadRefused(
                f"{quoted(text)} is not a local file URI. Give an absolute path inside {where}."
            )
        text = converted
    given = Path(text).expanduser()
    if not given.is_absolute():
        raise UploadRefused(
            f"{quoted(path)} is a relative path. The server's working directory is not the user's (desktop clients "
            f"start it in / or an app folder), so give the full path, e.g. {quoted(roots[0] / given)}."
        )

    outside = UploadRefused(
        f"{quoted(given)} is outside the allowed directories ({where}). Ask the user to add its folder to "
        "FLUX_MCP_ALLOWED_DIRS or to share it as an MCP root, or to move the image into one of those folders."
    )
    try:
        resolved = given.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loop
        raise UploadRefused(f"{quoted(given)} cannot be resolved ({reason_of(exc)}).") from exc
    inside = any(resolved.is_relative_to(root) for root in roots)
    try:
        real = given.resolve(strict=True)
        info = real.stat()
    except (OSError, RuntimeError) as exc:
        if not inside:
            raise outside from None  # do not reveal what exists outside the allowed folders
        if isinstance(exc, FileNotFoundError):
            raise UploadRefused(
                f"{quoted(given)} does not exist. Check the file name; images must be inside {where}."
            ) from None
        raise UploadRefused(f"{quoted(given)} cannot be read ({reason_of(exc)}).") from exc
    if not inside and not _inside_by_identity(real, roots):
        raise outside

    if stat.S_ISDIR(info.st_mode):
        raise UploadRefused(f"{quoted(given)} is a folder. Give the path of an image file inside it.")
    if not stat.S_ISREG(info.st_mode):
        raise UploadRefused(
            f"{quoted(given)} is not a regular file (a device, pipe or socket). Give an image file."
        )
    file = _open_no_follow(real, given)
    try:
        opened = os.fstat(file.fileno())
        if not os.path.samestat(opened, info) or not stat.S_ISREG(opened.st_mode):
            raise UploadRefused(f"{quoted(given)} changed while it was being checked; try the upload again.")
        if not _open_file_inside(file.fileno(), real, roots):
            raise outside
        if opened.st_nlink > 1 and not allow_hard_links:
            raise UploadRefused(
                f"{quoted(given)} has {opened.st_nlink} hard links, and a hard link inside an allowed folder can "
                "name any file on the filesystem, so it is not uploaded: copy the image into the folder "
                "(a copy has one link), or ask the user to set FLUX_MCP_ALLOW_HARD_LINKS=true."
            )
        if opened.st_size == 0:
            raise UploadRefused(f"{quoted(given)} is empty (0 bytes). Give an image file.")
        if opened.st_size > max_bytes:
            raise UploadRefused(
                f"{quoted(given)} is {_megabytes(opened.st_size)}, over the {_megabytes(max_bytes)} upload limit "
                "(FLUX_MCP_UPLOAD_MAX_BYTES). Use a smaller or more compressed version of the image."
            )
        content_type = sniff_content_type(file.read(_HEADER_BYTES) or b"")
        if content_type is None:
            raise UploadRefused(f"{quoted(given)} is not an image fal accepts: {_describe_content(file)}.")
        name = _upload_file_name(given.name, content_type)
        return LocalImage(
            path=real, size=opened.st_size, content_type=content_type, file_name=name, file=file
        )
    except BaseException:
        file.close()
        raise


def decode_image_data(data: str, file_name: str | None, max_bytes: int) -> DecodedImage:
    """Decode an image sent inline as a ``data:`` URI or bare base64, or raise ``UploadRefused``.

    Whitespace and line breaks (as base64 is often wrapped), missing padding and the URL-safe alphabet
    are tolerated, since LLMs and tools produce all of them. The size is checked from the encoded length
    before anything is decoded, so an oversized payload costs no memory. The type comes from the decoded
    content, not from the data URI or ``file_name``, and the file name's extension is made to match it.
    """
    text = data.strip()
    if not text:
        raise UploadRefused("`data` is empty. Pass the image as base64 or a data: URI, or give a `path`.")
    match = _DATA_URI.match(text)
    if match:
        params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
        if "base64" not in params:
            raise UploadRefused(
                "The data: URI is not base64-encoded. Send it as 'data:image/png;base64,...'."
            )
        text = match["payload"]
    elif re.match(r"^(https?|ftp)://", text, re.I):
        raise UploadRefused(
            "`data` is a URL, not image bytes. fal can fetch a public URL itself: pass it directly as the "
            "image URL of the generation tool instead of uploading it."
        )

    compact = "".join(text.split()).rstrip("=").translate(str.maketrans("-_", "+/"))
    if not compact:
        raise UploadRefused("`data` holds no image bytes (the base64 payload is empty).")
    decoded_size = len(compact) * 3 // 4
    if decoded_size > max_bytes:
        raise UploadRefused(
            f"The image is about {_megabytes(decoded_size)}, over the {_megabytes(max_bytes)} upload limit "
            "(FLUX_MCP_UPLOAD_MAX_BYTES). Send a smaller or more compressed version."
        )
    if len(compact) % 4 == 1:
        raise UploadRefused("`data` is not valid base64 (its length is impossible; is it truncated?).")
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        if _looks_like_path(text):
            raise UploadRefused(
                "`data` looks like a file path. Pass local files as `path`, not `data`."
            ) from exc
        raise UploadRefused(
            f"`data` is not valid base64 ({exc}). Send the file's bytes base64-encoded, optionally as "
            "'data:image/png;base64,...'."
        ) from exc
    if not raw:
        raise UploadRefused("`data` decodes to no bytes. Send the image's base64-encoded content.")
    content_type = sniff_content_type(raw[:_HEADER_BYTES])
    if content_type is None:
        raise UploadRefused(f"`data` is not an image fal accepts: {_describe_content(raw)}.")
    return DecodedImage(
        data=raw, content_type=content_type, file_name=_upload_file_name(file_name, content_type)
    )


def _looks_like_path(text: str) -> bool:
    # Checked only once base64 decoding failed: valid base64 (JPEG's starts '/9j/') can start with '/'.
    return text.startswith(("/", "~", "file:", "\\\\")) or re.match(r"^[A-Za-z]:[\\/]", text) is not None


def _allowed_roots(allowed_dirs: Sequence[Path]) -> list[Path]:
    roots: list[Path] = []
    for directory in allowed_dirs:
        expanded = Path(directory).expanduser()
        if not expanded.is_absolute():
            continue
        try:
            resolved = expanded.resolve(strict=False)
        except (OSError, RuntimeError):
            continue
        if resolved not in roots:
            roots.append(resolved)
    return roots


def _inside_by_identity(real: Path, roots: Sequence[Path]) -> bool:
    # The same folder can have two spellings (case-insensitive file systems, bind mounts); compare
    # each ancestor of the file with each allowed folder by device and inode instead of by name.
    root_stats = []
    for root in roots:
        try:
            root_stats.append(root.stat())
        except OSError:
            continue
    for ancestor in real.parents:
        try:
            ancestor_stat = ancestor.stat()
        except OSError:
            continue
        if any(os.path.samestat(ancestor_stat, root_stat) for root_stat in root_stats):
            return True
    return False


def _open_no_follow(real: Path, given: Path) -> io.FileIO:
    # O_NOFOLLOW: a symlink swapped in for the final component since the check is refused, not
    # followed; O_NONBLOCK: a pipe swapped in cannot hang the server.
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: FreeBSD's answer to O_NOFOLLOW
            raise UploadRefused(
                f"{quoted(given)} was replaced by a symbolic link while it was being checked; give the path of "
                "the image itself."
            ) from None
        raise UploadRefused(f"{quoted(given)} cannot be read ({reason_of(exc)}).") from exc
    return io.FileIO(fd, "r")


def _open_file_inside(fd: int, real: Path, roots: Sequence[Path]) -> bool:
    """Whether the open file is still inside an allowed folder, judged after opening.

    A folder of the checked path could have been swapped for a symlink between the check and the
    open; where the kernel says the open file is (Linux, macOS) cannot be faked that way. Elsewhere
    the checked path must still resolve to the open file.
    """
    where = _where_open(fd)
    if where is None:
        try:
            where = real.resolve(strict=True)
            if not os.path.samestat(where.stat(), os.fstat(fd)):
                return False
        except (OSError, RuntimeError):
            return False
    return any(where.is_relative_to(root) for root in roots) or _inside_by_identity(where, roots)


def _where_open(fd: int) -> Path | None:
    try:
        if sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd"):
            return Path(os.readlink(f"/proc/self/fd/{fd}"))
        if sys.platform == "darwin":
            import fcntl

            return Path(os.fsdecode(fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024)).rstrip(b"\0")))
    except OSError:
        return None
    return None


def _describe_content(source: BinaryIO | io.FileIO | bytes) -> str:
    """What the content is instead, in words the LLM can relay ('a TIFF image', 'not an image')."""
    from PIL import Image  # only on this refusal path; the server starts without Pillow

    try:
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        source.seek(0)
        with Image.open(source) as image:
            kind = image.format or "unknown"
    except Exception:  # only describing why it was refused: whatever Pillow raises means "not an image"
        return f"its content is not an image (only {_ACCEPTED} are accepted, whatever the file name says)"
    return f"it is a {kind} image, and only {_ACCEPTED} are accepted; convert it to PNG or JPEG first"


def _upload_file_name(name: str | None, content_type: str) -> str:
    """A portable basename whose extension matches the content, so fal serves it with the right type."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-_")[:80].rstrip(".-_")
    return f"{stem or 'image'}.{IMAGE_EXTENSIONS[content_type]}"


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
