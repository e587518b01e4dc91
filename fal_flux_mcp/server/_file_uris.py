"""Local folders and files named by ``file:`` URIs: MCP roots, and paths LLMs pass as URIs.

Clients share roots as ``file:`` URIs, percent-encoded, sometimes with a ``localhost`` host, and on
Windows in several spellings (``file:///C:/Users``, ``file:///c%3A/...``, ``file:///C|/...``, UNC
``file://server/share``). Each becomes a path in the syntax of the OS the server runs on, or nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

_DRIVE = re.compile(r"^/?(?P<letter>[A-Za-z])[:|](?P<rest>/.*)?$")


def roots_to_dirs(uris: Iterable[str]) -> list[Path]:
    """The local folders behind MCP root URIs; roots that are not ``file:`` URIs are skipped.

    Handles percent-encoding (spaces, non-ASCII), ``localhost`` hosts and Windows forms
    (``file:///C:/Users``, ``file:///c%3A/...``, ``file:///C|/...``, UNC ``file://server/share``).
    Duplicates are dropped, order is kept.
    """
    dirs: list[Path] = []
    for uri in uris:
        converted = file_uri_to_path(str(uri), windows=os.name == "nt")
        if converted is not None and Path(converted) not in dirs:
            dirs.append(Path(converted))
    return dirs


def file_uri_to_path(uri: str, *, windows: bool) -> str | None:
    """The local path of a ``file:`` URI in the given OS's syntax, or None if it names no local path."""
    try:
        parts = urlsplit(uri.strip())
    except ValueError:
        return None
    if parts.scheme.lower() != "file":
        return None
    host = unquote(parts.netloc)
    path = unquote(parts.path)
    if _DRIVE.match(host):  # 'file://C:/Users' (a common malformed form)
        path, host = host + path, ""
    if host.lower() == "localhost":
        host = ""
    if "\x00" in path or "\x00" in host:
        return None
    drive = _DRIVE.match(path)
    if windows:
        if host:
            return "\\\\" + host + path.replace("/", "\\")
        if drive:
            return f"{drive['letter'].upper()}:" + (drive["rest"] or "/").replace("/", "\\")
        return None if not path else path.replace("/", "\\")
    if host or drive or not path.startswith("/"):
        return None  # a network share or a Windows drive means nothing here
    return path
