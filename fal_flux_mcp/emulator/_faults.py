"""Fault injection: make the next few requests of a kind fail the ways fal and its ingress fail.

Faults are armed from the test's thread and consumed on the server's, hence the lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

Kind = Literal[
    "submit",
    "status",
    "stream",
    "result",
    "cancel",
    "run",
    "token",
    "upload",
    "multipart_create",
    "multipart_part",
    "multipart_complete",
    "initiate",
    "signed_put",
    "file",
    "jwks",
    "history",
    "pricing",
]
FaultName = Literal["429", "404", "502_nginx", "503_fal", "500", "500_after", "slow", "drop", "drop_before"]

KINDS: frozenset[str] = frozenset(Kind.__args__)  # type: ignore[attr-defined]
FAULTS: frozenset[str] = frozenset(FaultName.__args__)  # type: ignore[attr-defined]


@dataclass(slots=True)
class Fault:
    """One armed fault: applies to the next ``remaining`` requests of ``kind`` (or of any kind)."""

    kind: str
    fault: str
    remaining: int
    retry_after: float | None = None
    delay: float = 0.0


class FaultInjector:
    """Armed faults, consumed first-armed first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[Fault] = []

    def arm(self, kind: str, fault: str, count: int, retry_after: float | None, delay: float) -> None:
        """Arm ``fault`` for the next ``count`` requests of ``kind``; unknown names are a ``ValueError``."""
        if kind != "any" and kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}; expected 'any' or one of {sorted(KINDS)}")
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        with self._lock:
            self._armed.append(Fault(kind, fault, count, retry_after, delay))

    def take(self, kind: str) -> Fault | None:
        """The fault that applies to this request of ``kind``, if any, using up one of its count."""
        with self._lock:
            for armed in self._armed:
                if armed.kind in (kind, "any"):
                    armed.remaining -= 1
                    if armed.remaining <= 0:
                        self._armed.remove(armed)
                    return Fault(kind, armed.fault, 1, armed.retry_after, armed.delay)
        return None

    def clear(self) -> None:
        """Disarm everything."""
        with self._lock:
            self._armed.clear()
