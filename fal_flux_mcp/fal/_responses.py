"""Reading fal's HTTP responses: the one place a status code becomes an exception.

fal's error bodies come in several shapes (fal's queue API docs and its clients' error handling): a ``detail`` list
of pydantic-style field errors, a flat ``{"detail", "error_type"}`` for infrastructure failures,
``{"error", "message"}`` for unknown paths, and nginx HTML from the ingress. Each becomes an exception
whose message a person (or an LLM) can act on.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, Literal

import httpx

from fal_flux_mcp.fal._exceptions import (
    AccountLockedError,
    AuthenticationError,
    ContentPolicyError,
    FalError,
    FalTimeoutError,
    JobFailedError,
    NotFoundError,
    RateLimitedError,
    SubmissionStateUnknownError,
    UpstreamUnavailableError,
    ValidationError,
    describe_field_errors,
)

Phase = Literal["submit", "status", "result", "cancel", "upload", "download"]

_MAX_TEXT = 300


def fal_request_id(response: httpx.Response) -> str | None:
    """The ``x-fal-request-id`` header: present when fal itself (not its ingress) produced the answer."""
    return response.headers.get("x-fal-request-id")


def is_ingress_error(response: httpx.Response) -> bool:
    """A 502/503/504 from nginx in front of fal: the request never reached a fal service."""
    return (
        response.status_code in (502, 503, 504)
        and fal_request_id(response) is None
        and "nginx" in response.text.lower()
    )


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta or HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def json_body(response: httpx.Response) -> Any:
    """The response's JSON, or None when it has none (an nginx page, an empty body)."""
    try:
        return response.json()
    except ValueError:
        return None


def _field_errors(detail: Any) -> list[dict[str, Any]]:
    if isinstance(detail, list):
        return [entry for entry in detail if isinstance(entry, dict)]
    if isinstance(detail, str):
        return [{"loc": ["body"], "msg": detail, "type": "value_error"}]
    return []


def _detail_text(response: httpx.Response, body: Any) -> str:
    if isinstance(body, dict):
        detail = body.get("detail", body.get("message", body.get("error")))
        if isinstance(detail, list):
            return describe_field_errors(_field_errors(detail))
        if detail is not None:
            return str(detail)[:_MAX_TEXT]
    text = response.text.strip()
    if text.startswith("<"):
        return f"an HTML error page (HTTP {response.status_code})"
    return text[:_MAX_TEXT] or f"HTTP {response.status_code}"


def error_from_response(
    response: httpx.Response, phase: Phase, attempts: int = 1, *, local_origin: str | None = None
) -> FalError:
    """The exception for a non-2xx answer from fal during ``phase``, after ``attempts`` tries.

    ``local_origin`` is the origin standing in for fal (``FLUX_MCP_FAL_URL``), if any: a key rejected
    there is fixed by the emulator's key, not by a new one from fal's dashboard.
    """
    status = response.status_code
    body = json_body(response)
    detail = _detail_text(response, body)
    error_type = (body.get("error_type") if isinstance(body, dict) else None) or response.headers.get(
        "x-fal-error-type"
    )
    common: dict[str, Any] = {
        "status_code": status,
        "request_id": fal_request_id(response),
        "error_type": error_type,
    }
    gave_up = f" (gave up after {attempts} attempts)" if attempts > 1 else ""

    if status == 401 and local_origin is not None:
        return AuthenticationError(
            f"{local_origin} (FLUX_MCP_FAL_URL, standing in for fal) rejected the API key ({detail}). If "
            "it is the fal emulator, set FAL_KEY to the key it printed when it started (by default "
            "emulator-key-id:emulator-key-secret); to use the real fal, unset FLUX_MCP_FAL_URL.",
            **common,
        )
    if status == 401:
        return AuthenticationError(
            f"fal rejected the API key ({detail}). Set FAL_KEY to a valid key of the form "
            "'<key_id>:<key_secret>' from fal.ai/dashboard/keys.",
            **common,
        )
    if status == 403:
        if "lock" in detail.lower():
            return AccountLockedError(
                f"The fal account is locked: {detail} Nothing was charged; top up at "
                "fal.ai/dashboard/billing and try again.",
                **common,
            )
        return AuthenticationError(f"fal refused access (403: {detail}).", **common)
    if status == 422:
        errors = _field_errors(body.get("detail") if isinstance(body, dict) else None)
        summary = describe_field_errors(errors)
        if any(e.get("type") == "content_policy_violation" for e in errors):
            return ContentPolicyError(
                f"fal's content checker refused the request: {summary} Rephrase the prompt or use "
                "another input image.",
                errors,
                **common,
            )
        return ValidationError(f"fal rejected the input: {summary}", errors, **common)
    if status in (404, 405):
        return NotFoundError(f"fal does not know this endpoint or request ({status}: {detail}).", **common)
    if status == 429:
        return RateLimitedError(
            f"fal is rate limiting this key (429: {detail}). Wait a little and try again.{gave_up}",
            retry_after=retry_after_seconds(response),
            **common,
        )
    if status == 504 and response.headers.get("x-fal-request-timeout-type") == "user":
        return FalTimeoutError(
            "The job did not start before its start timeout; fal dropped it and did not charge for it.",
            **common,
        )
    if error_type in ("client_cancelled", "client_disconnected") or status == 499:
        return JobFailedError(f"The job was cancelled ({detail}).", **common)
    if status >= 500 and phase == "submit" and not is_ingress_error(response):
        # fal itself answered 5xx: the job may have been queued before the error, so it is not a
        # refusal to try again, but a submission to look for.
        return SubmissionStateUnknownError(
            f"fal answered HTTP {status} to the submit ({detail}) and may have queued the job anyway.",
            **common,
        )
    if status >= 500 and phase == "result":
        # Never a verdict on the job: a failed job also says so in its status, which is asked next.
        return UpstreamUnavailableError(
            f"fal could not serve the result right now (HTTP {status}: {detail}).", **common
        )
    if status >= 500:
        return UpstreamUnavailableError(
            f"fal is unavailable right now (HTTP {status}: {detail}). Try again in a minute.{gave_up}",
            **common,
        )
    return FalError(f"fal answered HTTP {status}: {detail}", **common)
