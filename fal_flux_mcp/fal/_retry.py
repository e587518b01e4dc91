"""When to try a fal request again, and how long to wait first.

The rules follow fal's own Python client (``fal_client``'s retry rules) with two changes:
``Retry-After`` is honoured, and a queue submit is retried only when the request surely did not reach
fal, because a submit that did reach it is a job that is paid for. Everything else about a submit that
may have arrived (a read timeout, a dropped connection) is reported, never replayed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import httpx

from fal_flux_mcp.fal._responses import is_ingress_error, retry_after_seconds

Idempotency = Literal["idempotent", "submit"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt k waits ``min(base * 2**(k-1), max_delay) * U(0.5, 1.5)``."""

    max_attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 10.0
    #: A ``Retry-After`` longer than this is not waited for: the caller gets the rate-limit error instead.
    max_retry_after: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        delay = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        return min(delay * random.uniform(0.5, 1.5), self.max_delay)

    def wait_after(self, attempt: int, error: Exception) -> float:
        """The backoff, or a rate limit's ``Retry-After`` if longer (up to ``max_retry_after``)."""
        delay = self.backoff(attempt)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


def surely_not_sent(exc: httpx.TransportError) -> bool:
    """Whether a transport error happened before any byte of the request could reach fal."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def transport_error_retryable(exc: httpx.TransportError, idempotency: Idempotency) -> bool:
    """Reads are retried on any transport failure; a submit only when it never left this machine."""
    if idempotency == "submit":
        return surely_not_sent(exc)
    return True


def response_retryable(response: httpx.Response, idempotency: Idempotency) -> bool:
    """Whether an error answer is worth another attempt.

    A submit is retried on 429 (fal refused it before queueing) and on ingress errors (nginx answered,
    no fal request id, so no job exists). Reads also retry 408 and 409, as fal's client does.
    """
    status = response.status_code
    if status == 429 or is_ingress_error(response):
        return True
    return idempotency == "idempotent" and status in (408, 409)


def delay_before_retry(policy: RetryPolicy, attempt: int, response: httpx.Response | None) -> float | None:
    """Seconds to wait before the next attempt, or None when a ``Retry-After`` asks for too long."""
    delay = policy.backoff(attempt)
    if response is not None:
        hint = retry_after_seconds(response)
        if hint is not None:
            if hint > policy.max_retry_after:
                return None
            delay = max(delay, hint)
    return delay
