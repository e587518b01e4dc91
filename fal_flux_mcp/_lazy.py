"""Names a package exports but loads on first use, so that importing the package stays cheap.

A server's start (and its first ``tools/list``) should not pay for httpx, Starlette or Pillow that it
may never need; the package's ``__init__`` sets ``__getattr__ = lazy_exports(globals(), {...})``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(namespace: dict[str, Any], where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from ``where[name]`` once, then keeps it."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
