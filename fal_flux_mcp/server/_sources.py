"""Input images, wherever the LLM points: an https URL, a data URI, a local file, or a previous result.

Every input (``image_url``, each of ``image_urls``, ``mask_url``) is first *located*: checked, and
measured where its size matters (a Fill's mask must match its image; FLUX.2 edits are sized and billed
by their inputs), with nothing uploaded yet, so that a bad input costs neither money nor an upload.
Only then does each get the URL fal fetches: an https URL as given, a small data URI inline, a local
file (opened once, inside the allowed folders, see ``_uploads``) or a large data URI uploaded to fal's
storage, and a previous result (``flux://images/{job_id}/{index}``) by its fal URL, or, when that URL
no longer answers, by uploading the saved file again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio

from fal_flux_mcp.fal import FalError
from fal_flux_mcp.server._errors import JobError, quoted, reason_of
from fal_flux_mcp.server._images import image_dimensions, sniff_content_type
from fal_flux_mcp.server._schemas import ImageInfo
from fal_flux_mcp.server._uploads import (
    DecodedImage,
    LocalImage,
    UploadRefused,
    decode_image_data,
    open_local_image,
)
from fal_flux_mcp.settings import Settings

if TYPE_CHECKING:
    from fal_flux_mcp.fal import FalClient

#: The folders local input images may come from; asked for only when an input is a local path (asking
#: may mean a round trip to the MCP client for its roots).
AllowedDirs = Callable[[], Awaitable[Sequence[Path]]]
#: A previous result's image by job id and index; a ``JobError`` when there is no such image.
FindImage = Callable[[str, int], ImageInfo]
#: Data URIs larger than this are uploaded rather than sent inline in the request body.
INLINE_DATA_URI_BYTES = 256 * 1024
_RESULT_URI = re.compile(r"^flux://images/(?P<job>[^/\s]+)/(?P<index>\d+)$")


@dataclass(slots=True)
class Source:
    """One located input image: what was given, its size when known, and how fal will get it."""

    field: str
    given: str
    size: tuple[int, int] | None = None
    url: str | None = None
    """A URL fal can fetch as it is (an https URL, a small data URI, a previous result's fal URL)."""
    local: LocalImage | None = None
    decoded: DecodedImage | None = None
    previous: bool = False
    """A previous result: its fal URL is checked before use."""
    saved: Path | None = None
    """A previous result's saved file, uploaded again if ``url`` no longer answers."""


class Sources:
    """Locates input images, then gets fal a URL for each; local files stay open in between."""

    def __init__(
        self,
        settings: Settings,
        fal: Callable[[], FalClient],
        find_image: FindImage,
        allowed_dirs: AllowedDirs,
    ) -> None:
        self.settings = settings
        self._fal = fal
        self._find_image = find_image
        self._allowed_dirs = allowed_dirs
        self._open = ExitStack()

    def __enter__(self) -> Sources:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._open.close()

    async def locate(self, field: str, value: str, *, measure: bool) -> Source:
        """Check ``value`` and, where it is cheap or ``measure`` asks for it, read its size."""
        result = _RESULT_URI.match(value.strip())
        if result:
            return self._previous_result(field, value, result["job"], int(result["index"]))
        scheme = urlsplit(value).scheme.lower()
        if scheme in ("http", "https"):
            source = Source(field, value, url=value)
            if measure:
                source.size = await self._measure_remote(field, value)
            return source
        if scheme == "data":
            try:
                decoded = decode_image_data(value, None, self.settings.upload_max_bytes)
            except UploadRefused as exc:
                raise JobError(f"{field}: {exc}") from None
            inline = value if len(value) <= INLINE_DATA_URI_BYTES else None
            return Source(field, value, size=_dimensions(field, decoded.data), url=inline, decoded=decoded)
        if scheme == "flux":
            raise JobError(
                f"{field}: {quoted(value)} is not an image of a previous result; those look like "
                "flux://images/{job_id}/{index} (index from 0), as in the resource_uri of each image."
            )
        return await self._local(field, value)

    def _previous_result(self, field: str, value: str, job_id: str, index: int) -> Source:
        try:
            image = self._find_image(job_id, index)
        except JobError as exc:
            raise JobError(f"{field}: {exc}") from None
        size = (image.width, image.height) if image.width and image.height else None
        saved = Path(image.path) if image.path else None
        return Source(field, value, size=size, url=image.url, previous=True, saved=saved)

    async def _measure_remote(self, field: str, url: str) -> tuple[int, int]:
        try:
            data = await self._fal().download(url)
        except FalError as exc:
            raise JobError(
                f"{field}: {quoted(url)} could not be read to check its size ({exc.message}). Give a URL "
                "that answers, a local file, or a previous result (flux://images/...)."
            ) from None
        return _dimensions(field, data)

    async def _local(self, field: str, value: str) -> Source:
        settings = self.settings
        try:
            local = await open_local_image(
                value,
                await self._allowed_dirs(),
                settings.upload_max_bytes,
                allow_hard_links=settings.allow_hard_links,
            )
        except UploadRefused as exc:
            raise JobError(f"{field}: {exc}") from None
        self._open.callback(local.close)
        data = await anyio.to_thread.run_sync(os.pread, local.fileno(), local.size, 0)
        return Source(field, value, size=_dimensions(field, data), local=local)

    async def url_for(self, source: Source) -> str:
        """The URL fal fetches ``source`` from, uploading it first where fal could not reach it."""
        fal = self._fal()
        if source.local is not None:
            local = source.local
            return await fal.upload_from_file(
                local, size=local.size, content_type=local.content_type, file_name=local.file_name
            )
        if source.previous:
            return await self._previous_url(source, fal)
        if source.url is not None:
            return source.url
        assert source.decoded is not None
        decoded = source.decoded
        return await fal.upload_bytes(
            decoded.data, content_type=decoded.content_type, file_name=decoded.file_name
        )

    async def _previous_url(self, source: Source, fal: FalClient) -> str:
        """A previous result's fal URL while it answers (or fal cannot tell); once fal's CDN says it
        is gone, its saved file uploaded again."""
        assert source.url is not None
        if await fal.url_answers(source.url) is not False:
            return source.url
        if source.saved is None:
            raise JobError(
                f"{source.field}: {quoted(source.given)} is no longer on fal and was never saved here. "
                "Give the image another way (a local file or a URL)."
            )
        try:
            data = await anyio.Path(source.saved).read_bytes()
        except OSError as exc:
            raise JobError(
                f"{source.field}: {quoted(source.given)} is no longer on fal and its saved file "
                f"{quoted(source.saved)} cannot be read ({reason_of(exc)}). Give the image another way."
            ) from None
        content_type = sniff_content_type(data[:64]) or "image/jpeg"
        return await fal.upload_bytes(data, content_type=content_type, file_name=source.saved.name)


def check_mask(image: Source, mask: Source) -> None:
    """A ``JobError`` unless the mask has its image's size, as fal's Fill requires."""
    if image.size is None or mask.size is None or image.size == mask.size:
        return
    (iw, ih), (mw, mh) = image.size, mask.size
    raise JobError(
        f"mask_url is {mw}x{mh} but image_url is {iw}x{ih}: the mask must be exactly the image's size "
        "(white where the image changes, black where it stays). Nothing was sent to fal."
    )


def _dimensions(field: str, data: bytes) -> tuple[int, int]:
    try:
        width, height, _ = image_dimensions(data)
    except Exception:  # whatever Pillow raises, the bytes are not an image fal could use either
        raise JobError(f"{field} is not an image (JPEG, PNG, WebP, GIF or AVIF).") from None
    return width, height
