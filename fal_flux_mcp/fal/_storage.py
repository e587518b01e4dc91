"""Putting files on fal's storage, so that a local image can be an input to a model.

The routes are fal's own client's (``fal_client``'s storage upload): a CDN token, then one POST for files up to
the multipart threshold or a multipart upload above it, and the older initiate-and-PUT route as the
fallback when the CDN route fails. Files are streamed from disk: a large file is never held in memory
whole, only one part per parallel upload slot.

A file is uploaded from an open descriptor, read by position (``pread``) in worker threads, and never
opened again by name: what goes to fal's public CDN is the file the caller opened (and checked), even
if its name is made to point elsewhere while a request waits, and parallel parts read their own ranges
of the one descriptor without sharing a file position.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import anyio

from fal_flux_mcp.fal._exceptions import (
    AccountLockedError,
    AuthenticationError,
    FalError,
    MissingCredentialsError,
    UploadError,
)
from fal_flux_mcp.fal._transport import FalTransport

logger = logging.getLogger("fal_flux_mcp.fal")

MiB = 1024 * 1024
_READ_CHUNK = 256 * 1024
_TOKEN_MARGIN = timedelta(seconds=30)
#: Serialises seek + read where the OS has no ``pread`` (Windows), so concurrent parts stay positional.
_SEEK_LOCK = threading.Lock()


class HasFileno(Protocol):
    """An open file: anything with ``fileno()`` (a file object, or ``LocalImage``-like owners of one)."""

    def fileno(self) -> int: ...


def read_range(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` of ``fd``, short only at the end of the file; blocking."""
    chunks: list[bytes] = []
    while length > 0:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, length, offset)
        else:  # pragma: no cover - Windows
            with _SEEK_LOCK:
                os.lseek(fd, offset, os.SEEK_SET)
                chunk = os.read(fd, length)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class _Token:
    token: str
    token_type: str
    base_url: str
    expires_at: datetime

    @property
    def header(self) -> str:
        return f"{self.token_type} {self.token}"


@dataclass(frozen=True, slots=True)
class _Source:
    """What to upload: an open file descriptor or bytes in memory, readable in ranges."""

    size: int
    content_type: str
    file_name: str
    fd: int | None = None
    data: bytes | None = None

    def reader(self, offset: int = 0, length: int | None = None) -> Callable[[], AsyncIterator[bytes]]:
        """A factory of fresh async iterators over ``[offset, offset + length)``: one per attempt."""
        end = self.size if length is None else min(self.size, offset + length)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(offset, end, _READ_CHUNK):
                yield await self.read(start, min(end, start + _READ_CHUNK) - start)

        return chunks

    async def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``; a file that shrank since its size was taken is an error."""
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self.fd is not None
        # Not abandoned on cancellation: the caller closes the descriptor only once no read is using it.
        data = await anyio.to_thread.run_sync(read_range, self.fd, offset, length)
        if len(data) != length:
            raise UploadError(f"{self.file_name} shrank while it was being uploaded")
        return data


class Uploader:
    """Uploads to fal's storage and returns the public URL a model can fetch."""

    def __init__(
        self,
        transport: FalTransport,
        *,
        multipart_threshold: int = 100 * MiB,
        part_size: int = 10 * MiB,
        parallel_parts: int = 4,
    ) -> None:
        self._transport = transport
        self._hosts = transport.hosts
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.parallel_parts = parallel_parts
        self._token: _Token | None = None
        self._token_lock = anyio.Lock()

    async def upload_file(
        self, path: str | Path, *, content_type: str | None = None, file_name: str | None = None
    ) -> str:
        """Upload a local file, streamed from disk; it is opened once, and closed whatever happens."""
        file = Path(path)
        with anyio.CancelScope(shield=True):  # a cancelled open would leave its descriptor to the GC
            handle = await anyio.to_thread.run_sync(file.open, "rb", 0)
        with handle:
            return await self.upload_from_file(
                handle, content_type=content_type, file_name=file_name or file.name
            )

    async def upload_from_file(
        self,
        file: int | HasFileno,
        *,
        content_type: str | None = None,
        file_name: str,
        size: int | None = None,
    ) -> str:
        """Upload the first ``size`` bytes (default: all) of an open file; the caller keeps and closes it.

        Reads are positional, so the file's own position is neither used nor moved.
        """
        fd = file if isinstance(file, int) else file.fileno()
        if size is None:
            size = os.fstat(fd).st_size
        guessed = content_type or mimetypes.guess_type(file_name)[0] or "application/octet-stream"
        return await self._upload(_Source(size=size, content_type=guessed, file_name=file_name, fd=fd))

    async def upload_bytes(self, data: bytes, *, content_type: str, file_name: str | None = None) -> str:
        """Upload bytes already in memory (a decoded data URI, say)."""
        name = file_name or f"upload{mimetypes.guess_extension(content_type) or '.bin'}"
        return await self._upload(
            _Source(size=len(data), content_type=content_type, file_name=name, data=data)
        )

    async def _upload(self, source: _Source) -> str:
        try:
            token = await self._cdn_token()
            if source.size > self.multipart_threshold:
                return await self._multipart(source, token)
            return await self._single(source, token)
        except (MissingCredentialsError, AuthenticationError, AccountLockedError):
            raise
        except FalError as primary:
            logger.info("CDN upload failed (%s); falling back to initiate + PUT", primary)
            try:
                return await self._initiate_and_put(source)
            except FalError as fallback:
                raise UploadError(
                    f"Could not upload {source.file_name!r} to fal: {primary.message} (fallback route: "
                    f"{fallback.message})"
                ) from fallback

    async def _cdn_token(self) -> _Token:
        async with self._token_lock:
            now = datetime.now(UTC)
            if self._token is not None and self._token.expires_at - _TOKEN_MARGIN > now:
                return self._token
            response = await self._transport.send(
                "POST",
                self._hosts.storage_token_url(),
                phase="upload",
                json={},
                headers={"Accept": "application/json"},
            )
            body = response.json()
            try:
                expires_at = datetime.fromisoformat(str(body["expires_at"]).replace("Z", "+00:00"))
                if expires_at.tzinfo is None:
                    expires_at = expires_at.replace(tzinfo=UTC)
                base_url = str(body["base_url"]).rstrip("/")
                if not self._hosts.is_fal_file_host(base_url):
                    base_url = self._hosts.cdn
                self._token = _Token(str(body["token"]), str(body["token_type"]), base_url, expires_at)
            except (KeyError, TypeError, ValueError) as exc:
                raise UploadError(f"fal's storage token answer was not understood ({exc!r})") from None
            return self._token

    def _headers(self, source: _Source, length: int) -> dict[str, str]:
        return {
            "Content-Type": source.content_type,
            "Content-Length": str(length),
            "X-Fal-File-Name": source.file_name,
        }

    async def _single(self, source: _Source, token: _Token) -> str:
        response = await self._transport.send(
            "POST",
            f"{self._hosts.cdn}/files/upload",
            phase="upload",
            auth=token.header,
            content=source.reader(),
            headers=self._headers(source, source.size),
        )
        return self._url_from(response.json(), "access_url")

    async def _multipart(self, source: _Source, token: _Token) -> str:
        response = await self._transport.send(
            "POST",
            f"{token.base_url}/files/upload/multipart",
            phase="upload",
            auth=token.header,
            headers={
                "Content-Type": source.content_type,
                "Accept": "application/json",
                "X-Fal-File-Name": source.file_name,
            },
        )
        body = response.json()
        access_url = self._url_from(body, "access_url")
        upload_id = str(body.get("uploadId") or body.get("upload_id") or "")
        if not upload_id:
            raise UploadError("fal's multipart answer had no uploadId")

        count = (source.size + self.part_size - 1) // self.part_size
        etags: dict[int, str] = {}
        limiter = anyio.CapacityLimiter(self.parallel_parts)

        async def put_part(number: int) -> None:
            async with limiter:
                offset = (number - 1) * self.part_size
                length = min(self.part_size, source.size - offset)
                part = await source.read(offset, length)
                answer = await self._transport.send(
                    "PUT",
                    f"{access_url}/multipart/{upload_id}/{number}",
                    phase="upload",
                    auth=token.header,
                    content=lambda: part,
                    headers={"Content-Type": source.content_type, "Accept-Encoding": "identity"},
                )
                etag = answer.headers.get("etag")
                if not etag:
                    raise UploadError(f"fal did not acknowledge part {number} (no ETag)")
                etags[number] = etag

        async with anyio.create_task_group() as group:
            for number in range(1, count + 1):
                group.start_soon(put_part, number)

        await self._transport.send(
            "POST",
            f"{access_url}/multipart/{upload_id}/complete",
            phase="upload",
            auth=token.header,
            json={"parts": [{"partNumber": n, "etag": etags[n]} for n in sorted(etags)]},
        )
        return access_url

    async def _initiate_and_put(self, source: _Source) -> str:
        response = await self._transport.send(
            "POST",
            self._hosts.upload_initiate_url("gcs"),
            phase="upload",
            json={"file_name": source.file_name, "content_type": source.content_type},
        )
        body = response.json()
        upload_url = self._url_from(body, "upload_url", trusted_host=False)
        file_url = self._url_from(body, "file_url", trusted_host=False)
        # The signed URL carries its own credentials; the fal key is not sent to it.
        await self._transport.send(
            "PUT",
            upload_url,
            phase="upload",
            auth="none",
            content=source.reader(),
            headers={"Content-Type": source.content_type, "Content-Length": str(source.size)},
        )
        return file_url

    def _url_from(self, body: object, key: str, *, trusted_host: bool = True) -> str:
        url = body.get(key) if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise UploadError(f"fal's storage answer had no usable {key!r}")
        if trusted_host and not self._hosts.is_fal_file_host(url):
            raise UploadError(f"fal's storage answered with a {key!r} outside fal's hosts; not used")
        return url
