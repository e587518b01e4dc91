"""A client for fal.ai's queue and storage APIs that never pays twice and never leaks the key.

It knows nothing of MCP: it submits FLUX jobs, follows them (status stream, polling as fallback),
fetches results, cancels, and uploads input files.
"""

from flux_mcp.fal._client import FalClient, Priority, StatusCallback
from flux_mcp.fal._exceptions import (
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
from flux_mcp.fal._retry import RetryPolicy
from flux_mcp.fal._types import CancelResult, LogEntry, QueueHandle, QueueStatus
from flux_mcp.fal._urls import EndpointId, FalHosts

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
]
