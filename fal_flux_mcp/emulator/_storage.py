"""fal's storage, on local disk: CDN tokens, single and multipart uploads, signed-URL uploads, files.

Bodies are streamed to disk as they arrive so a 100 MiB multipart upload never sits in memory.
Keys look like fal's CDN paths, ``<bucket word>/<id>_<name>``, and are served under ``/files/``.
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

_BUCKETS = ("zebra", "lion", "panda", "koala", "tiger", "penguin", "rabbit", "monkey", "elephant", "kangaroo")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class StorageError(Exception):
    """A storage request the emulator refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class StoredFile:
    """A file the emulator serves under ``/files/<key>``."""

    key: str
    path: Path
    content_type: str
    size: int


@dataclass(slots=True)
class _Multipart:
    key: str
    content_type: str
    directory: Path
    etags: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class _SignedUpload:
    key: str
    content_type: str
    signature: str


class FileStore:
    """Uploaded and generated files under one directory, plus the tokens and uploads in flight."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, StoredFile] = {}
        self._tokens: dict[str, float] = {}
        self._multipart: dict[str, _Multipart] = {}
        self._signed: dict[str, _SignedUpload] = {}
        self._secret = secrets.token_bytes(32)

    # ----------------------------------------------------------------------------------------------
    # Keys and files

    def new_key(self, file_name: str | None, content_type: str) -> str:
        """A fresh CDN key: ``<bucket>/<id>_<name>`` for a named file, ``<bucket>/<id>.<ext>`` otherwise."""
        bucket = secrets.choice(_BUCKETS)
        ident = secrets.token_urlsafe(15)
        name = _safe_name(file_name) if file_name else ""
        if name:
            return f"{bucket}/{ident}_{name}"
        extension = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
        return f"{bucket}/{ident}{extension}"

    def get(self, key: str) -> StoredFile | None:
        """The file stored under ``key``, if any."""
        return self._files.get(key)

    def remove(self, key: str) -> bool:
        """Forget the file under ``key`` (as fal's CDN drops old files); whether there was one."""
        stored = self._files.pop(key, None)
        if stored is not None:
            stored.path.unlink(missing_ok=True)
        return stored is not None

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredFile:
        """Store ``data`` under ``key`` (blocking: call it off the event loop for big files)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self._register(key, path, content_type)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> StoredFile:
        """Store a streamed request body under ``key`` without holding it in memory."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        await _write_stream(path, chunks)
        return self._register(key, path, content_type)

    def _register(self, key: str, path: Path, content_type: str) -> StoredFile:
        stored = StoredFile(key, path, content_type, path.stat().st_size)
        self._files[key] = stored
        return stored

    def _path(self, key: str) -> Path:
        path = (self.root / "files" / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError("invalid file key", 404)
        return path

    # ----------------------------------------------------------------------------------------------
    # CDN tokens

    def issue_token(self, ttl_seconds: float) -> tuple[str, float]:
        """A new upload token and its expiry (unix time)."""
        token = secrets.token_urlsafe(24)
        expires = time.time() + ttl_seconds
        self._tokens[token] = expires
        return token, expires

    def token_valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired."""
        expires = self._tokens.get(token)
        return expires is not None and time.time() < expires

    # ----------------------------------------------------------------------------------------------
    # Multipart uploads

    def multipart_create(self, file_name: str | None, content_type: str) -> tuple[str, str]:
        """Start a multipart upload: its key and its upload id."""
        key = self.new_key(file_name or "upload.bin", content_type)
        upload_id = secrets.token_urlsafe(18)
        directory = self.root / "multipart" / upload_id
        directory.mkdir(parents=True)
        self._multipart[upload_id] = _Multipart(key, content_type, directory)
        return key, upload_id

    async def multipart_part(
        self, key: str, upload_id: str, number: int, chunks: AsyncIterator[bytes]
    ) -> str:
        """Store one part and return its ETag (quoted MD5, as S3-style stores answer)."""
        upload = self._multipart_for(key, upload_id)
        if number < 1:
            raise StorageError("part numbers start at 1")
        digest = await _write_stream(upload.directory / f"{number:05d}", chunks)
        etag = f'"{digest}"'
        upload.etags[number] = etag
        return etag

    def multipart_complete(self, key: str, upload_id: str, parts: object) -> StoredFile:
        """Join the listed parts in part-number order, whatever order the client listed them in.

        Blocking (it copies every byte): call it off the event loop.
        """
        upload = self._multipart_for(key, upload_id)
        numbers = _part_numbers(parts, upload.etags)
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as target:
            for number in numbers:
                with (upload.directory / f"{number:05d}").open("rb") as source:
                    shutil.copyfileobj(source, target, 1024 * 1024)
        shutil.rmtree(upload.directory, ignore_errors=True)
        del self._multipart[upload_id]
        return self._register(key, path, upload.content_type)

    def _multipart_for(self, key: str, upload_id: str) -> _Multipart:
        upload = self._multipart.get(upload_id)
        if upload is None or upload.key != key:
            raise StorageError("Upload not found", 404)
        return upload

    # ----------------------------------------------------------------------------------------------
    # Signed-URL uploads (the ``storage/upload/initiate`` route)

    def signed_create(self, file_name: str | None, content_type: str) -> tuple[str, str, str]:
        """Reserve a key for a signed PUT: the key, the upload id and its signature."""
        key = self.new_key(file_name or "upload.bin", content_type)
        upload_id = secrets.token_urlsafe(18)
        signature = hmac.new(self._secret, f"{upload_id}:{key}".encode(), hashlib.sha256).hexdigest()
        self._signed[upload_id] = _SignedUpload(key, content_type, signature)
        return key, upload_id, signature

    async def signed_put(
        self, upload_id: str, signature: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> StoredFile:
        """Accept the PUT of a signed upload; a wrong signature is refused like a cloud bucket does."""
        upload = self._signed.get(upload_id)
        if upload is None or not hmac.compare_digest(upload.signature, signature):
            raise StorageError(
                "The request signature we calculated does not match the signature you provided.", 403
            )
        stored = await self.put_stream(upload.key, chunks, content_type or upload.content_type)
        del self._signed[upload_id]
        return stored


def _safe_name(file_name: str) -> str:
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    return _UNSAFE.sub("_", base).strip("._")[:120]


def _part_numbers(parts: object, etags: dict[int, str]) -> list[int]:
    if not isinstance(parts, list) or not parts:
        raise StorageError("'parts' must be a non-empty list of {partNumber, etag}")
    listed: dict[int, str] = {}
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("partNumber"), int):
            raise StorageError("each part needs an integer 'partNumber' and an 'etag'")
        listed[part["partNumber"]] = str(part.get("etag", ""))
    for number, etag in listed.items():
        if number not in etags:
            raise StorageError(f"part {number} was not uploaded")
        if _bare_etag(etag) != _bare_etag(etags[number]):
            raise StorageError(f"ETag of part {number} does not match the uploaded part")
    return sorted(listed)


def _bare_etag(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"')


async def _write_stream(path: Path, chunks: AsyncIterator[bytes]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("wb") as target:
        async for chunk in chunks:
            if chunk:
                target.write(chunk)
                digest.update(chunk)
    return digest.hexdigest()
