"""The errors the fal client raises: one hierarchy, each class something a caller can act on.

HTTP statuses and transport failures are mapped to these in one place (``_responses.error_from_response`` and
the transport boundary in ``_transport``); nothing above the client ever sees an ``httpx`` exception.
Messages never contain the API key.
"""

from __future__ import annotations

from typing import Any


class FalError(Exception):
    """Base of every error the fal client raises."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.request_id = request_id
        self.error_type = error_type


class MissingCredentialsError(FalError):
    """No usable fal key is configured (set FAL_KEY, or FAL_KEY_ID and FAL_KEY_SECRET).

    A placeholder or malformed key counts as none: it is refused before anything is sent to fal.
    """


class AuthenticationError(FalError):
    """fal rejected the key (HTTP 401)."""


class AccountLockedError(FalError):
    """The fal account is locked, usually for an exhausted balance (HTTP 403)."""


class ValidationError(FalError):
    """fal (or the local pre-check) rejected the input; ``field_errors`` lists what and where."""

    def __init__(self, message: str, field_errors: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.field_errors = field_errors


class ContentPolicyError(ValidationError):
    """fal's content checker refused the prompt or an input image."""


class NotFoundError(FalError):
    """The endpoint or request id is unknown to fal (HTTP 404/405)."""


class RateLimitedError(FalError):
    """fal kept answering 429 after every retry; ``retry_after`` is its hint in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class UpstreamUnavailableError(FalError):
    """fal or its ingress failed (5xx, connection refused or dropped) and retrying did not help."""


class FalTimeoutError(FalError):
    """fal did not answer in time, or a job did not start before its start timeout."""


class SubmissionStateUnknownError(FalError):
    """A submit may or may not have reached fal; it was not retried, so that nothing is paid twice."""


class JobFailedError(FalError):
    """The job ran and failed on fal's side (reported as COMPLETED with an error)."""


class ForeignURLError(FalError):
    """A URL points outside fal's hosts; it was not fetched, so the key did not leave."""


class UploadError(FalError):
    """A file could not be stored on fal's storage by any of the upload routes."""


def describe_field_errors(errors: list[dict[str, Any]]) -> str:
    """``'num_images: Input should be less than or equal to 4; prompt: Field required'``."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", []) if p != "body"]
        where = ".".join(loc) or "input"
        parts.append(f"{where}: {error.get('msg', error.get('type', 'invalid'))}")
    return "; ".join(parts) or "the input was rejected"
