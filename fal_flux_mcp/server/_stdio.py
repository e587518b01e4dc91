"""MCP over stdio that answers every malformed line with a JSON-RPC error, as JSON-RPC 2.0 requires.

Why: mcp 2.3.0's ``stdio_server`` parses each stdin line with pydantic; a line that fails becomes an
exception on the read stream, which the server's dispatcher logs at DEBUG and drops (its
``on_stream_exception`` observer cannot be set through ``MCPServer`` and never sees the line). Worse,
a request whose id is not a string or integer (``1.5``, ``null``, ``true``) validates as a
*notification*: the id is discarded and the request is never answered. Either way the client waits
for its own timeout. The SDK has no option, callback or error-reply path for this.

``run_stdio`` is ``MCPServer.run_stdio_async`` with one change: the SDK's stdio transport reads stdin
through ``_CheckedStdin``, which passes on every line the SDK can take, unchanged, and answers the
others itself:

- text that cannot be parsed as JSON (syntax errors, NaN/Infinity, nesting deeper than Python's
  recursion limit): -32700 Parse error, id null;
- JSON that is not one valid JSON-RPC 2.0 message: -32600 Invalid Request, with the id when it is a
  string or an integer, else null. That covers ``"jsonrpc": "1.0"``, a float/null/boolean id, and a
  batch (a JSON array): MCP 2025-06-18 removed batching, so the array is one invalid message and gets
  one error with id null, none of its members being run;
- numbers beyond the 4300-digit limit are valid JSON text that neither parser takes: -32600, so
  the id can be given back when it is readable;
- a lone surrogate escape (``"\\ud800"``, a cut emoji from ``JSON.stringify``) is valid JSON grammar
  but not Unicode text, which every MCP string is: -32600 with the id, so the client can fail that
  request at once (an id that itself holds one is given back as null, as it cannot be encoded);
- blank lines are skipped without a reply: whitespace between messages, not a message.

Replies go through the SDK's own write stream, so its single stdout writer frames them (one line
each) and serializes them with every other message; stdout carries nothing else.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import IO, Any, BinaryIO, NoReturn, Protocol

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

logger = logging.getLogger("fal_flux_mcp.server")

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

RequestId = str | int


class _Sender(Protocol):
    """The send side of the SDK's write stream, as far as replies need it."""

    async def send(self, item: SessionMessage, /) -> None: ...


class _TooManyDigits:
    """Stands in for an integer literal longer than ``int()`` accepts, so the rest can still be read."""


_TOO_MANY_DIGITS = _TooManyDigits()


def _parse_int(text: str) -> int | _TooManyDigits:
    try:
        return int(text)
    except ValueError:
        return _TOO_MANY_DIGITS


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _readable_id(data: object) -> RequestId | None:
    """The message's id if it is one MCP allows (a string or an integer, not a bool) and can be sent back."""
    request_id = data.get("id") if isinstance(data, dict) else None
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        return request_id
    if isinstance(request_id, str) and not _LONE_SURROGATE.search(request_id):
        return request_id
    return None


def _unreadable_value(data: object) -> str | None:
    """Why a value in ``data`` cannot be taken (lone surrogate, too many digits), else None.

    Iterative, because the parsed value can be as deep as the recursion limit allowed.
    """
    pending: list[object] = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str) and _LONE_SURROGATE.search(item):
            return "a string holds a lone surrogate escape (\\ud800-\\udfff), which is not Unicode text"
        elif item is _TOO_MANY_DIGITS:
            return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return None


def _invalid_reason(data: object, sdk_error: ValidationError | None) -> str:
    if isinstance(data, list):
        return "batches are not supported (MCP removed JSON-RPC batching); send one message per line"
    if not isinstance(data, dict):
        return "a message must be a JSON object"
    if data.get("jsonrpc") != "2.0":
        return 'jsonrpc must be "2.0"'
    unreadable = _unreadable_value(data)
    if unreadable is not None:
        return unreadable
    if "id" in data and _readable_id(data) is None:
        return "id must be a string or an integer"
    if sdk_error is None:  # pragma: no cover - the SDK took it, so the id must have been the problem
        return "not a JSON-RPC 2.0 message"
    first = sdk_error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"][1:])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def check_line(line: str) -> JSONRPCError | None:
    """The error reply ``line`` deserves, or None when the SDK takes it as it is.

    The SDK's own parser decides first, so whatever it accepts passes unchanged (and a good line costs
    one extra pydantic parse); only lines it refuses, and notifications (to catch a request whose
    bad id made it one), are parsed again with ``json`` to choose the error and find the id.
    """
    sdk_error: ValidationError | None = None
    try:
        message = jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        sdk_error = exc
    else:
        if not isinstance(message, JSONRPCNotification):
            return None
    try:
        data = json.loads(line, parse_int=_parse_int, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        if sdk_error is None:
            return None  # a notification the SDK reads and json does not (NaN): the SDK's call
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return _error(PARSE_ERROR, f"Parse error: {reason}", None)
    if sdk_error is None and not (isinstance(data, dict) and "id" in data):
        return None  # a true notification
    return _error(INVALID_REQUEST, f"Invalid Request: {_invalid_reason(data, sdk_error)}", _readable_id(data))


def _error(code: int, message: str, request_id: RequestId | None) -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))


class _UnownedText(io.TextIOWrapper):
    """Text over a buffer that is not ours to close (fd 0's wire): closing detaches instead."""

    def close(self) -> None:
        with suppress(ValueError):
            self.detach()


class _CheckedStdin(anyio.AsyncFile[str]):
    """Stdin as the SDK's reader iterates it: the lines it can take, the others answered here."""

    def __init__(self, fp: IO[str]) -> None:
        super().__init__(fp)
        self._replies: _Sender | None = None
        self._ready = anyio.Event()

    def reply_through(self, write_stream: _Sender) -> None:
        """Send error replies into the SDK's write stream (known only once the transport is up)."""
        self._replies = write_stream
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[str]:
        while line := await self.readline():
            if not line.strip():
                continue
            try:
                error = check_line(line)
            except Exception:  # never let a checking bug stop the server: the SDK gets the line as before
                logger.exception("stdio: could not check a line; passing it on")
                error = None
            if error is None:
                yield line
                continue
            logger.info("stdio: answered a line of %d characters with %s", len(line), error.error.message)
            await self._ready.wait()
            assert self._replies is not None
            try:
                await self._replies.send(SessionMessage(error))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return  # the server is shutting down; nothing more will be answered


def _claim_stdin() -> tuple[BinaryIO, Callable[[], None] | None]:
    """fd 0 claimed exactly as the SDK's ``stdio_server`` claims it, and its release.

    While serving, fd 0 points at the null device and the wire is read from a private duplicate, so
    handlers and child processes cannot steal protocol bytes. This uses the SDK's private helpers
    (one claim registry, the Windows handling); a future SDK without them serves stdin in place.
    """
    try:
        from mcp.server.stdio import _claim_fd, _open_stdin_diversion
    except ImportError:  # pragma: no cover
        return sys.stdin.buffer, None
    return _claim_fd(0, sys.stdin, "rb", _open_stdin_diversion)


async def run_stdio(server: MCPServer[Any]) -> None:
    """Serve ``server`` over stdin/stdout like ``server.run("stdio")``, answering malformed lines.

    Same streams, same fd claims, same lowlevel ``run`` as ``MCPServer.run_stdio_async``; the only
    difference is the stdin wrapper described in this module's docstring.
    """
    buffer, release = _claim_stdin()
    try:
        stdin = _CheckedStdin(_UnownedText(buffer, encoding="utf-8", errors="replace"))
        async with stdio_server(stdin=stdin) as (read_stream, write_stream):
            stdin.reply_through(write_stream)
            lowlevel = server._lowlevel_server  # what run_stdio_async drives; no public accessor
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
    finally:
        if release is not None:
            release()
