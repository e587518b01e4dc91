"""A client for fal.ai's queue and storage APIs that never pays twice and never leaks the key.

It knows nothing of MCP: it submits FLUX jobs, follows them (status stream, polling as fallback),
fetches results, cancels, and uploads input files.

Importing this package is cheap: the client itself, and httpx with it, load on first use of
``FalClient`` or ``RetryPolicy``. That keeps an MCP server's start (and its first ``tools/list``)
free of the HTTP stack's import time.
"""

from typing import TYPE_CHECKING

from fal_flux_mcp._lazy import lazy_exports
from fal_flux_mcp.fal._exceptions import (
    AccountLockedError,
    AuthenticationError,
    ContentPolicyError,
    FalError,
    FalTimeoutError,
    ForeignURLError,
    JobFailedError,
    MissingCredentialsError,
    NotFoundError,
    RateLimitedError,
    SubmissionStateUnknownError,
    UploadError,
    UpstreamUnavailableError,
    ValidationError,
)
from fal_flux_mcp.fal._inputs import validate_input
from fal_flux_mcp.fal._types import CancelResult, HistoryItem, LogEntry, QueueHandle, QueueStatus
from fal_flux_mcp.fal._urls import EndpointId, FalHosts

if TYPE_CHECKING:
    from fal_flux_mcp.fal._client import FalClient, Priority, StatusCallback
    from fal_flux_mcp.fal._retry import RetryPolicy

_LAZY = {
    "FalClient": "fal_flux_mcp.fal._client",
    "Priority": "fal_flux_mcp.fal._client",
    "StatusCallback": "fal_flux_mcp.fal._client",
    "RetryPolicy": "fal_flux_mcp.fal._retry",
}


__getattr__ = lazy_exports(globals(), _LAZY)

__all__ = [
    "AccountLockedError",
    "AuthenticationError",
    "CancelResult",
    "ContentPolicyError",
    "EndpointId",
    "FalClient",
    "FalError",
    "FalHosts",
    "FalTimeoutError",
    "ForeignURLError",
    "HistoryItem",
    "JobFailedError",
    "LogEntry",
    "MissingCredentialsError",
    "NotFoundError",
    "Priority",
    "QueueHandle",
    "QueueStatus",
    "RateLimitedError",
    "RetryPolicy",
    "StatusCallback",
    "SubmissionStateUnknownError",
    "UploadError",
    "UpstreamUnavailableError",
    "ValidationError",
    "validate_input",
]
