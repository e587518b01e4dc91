"""What fal's queue says about a job, as typed values the rest of fal-flux-mcp can rely on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

QueueState = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


class LogEntry(BaseModel):
    """One line of a job's log, as fal streams it."""

    model_config = ConfigDict(extra="allow")

    message: str
    level: str = "INFO"
    source: str | None = None
    timestamp: str | None = None


class QueueHandle(BaseModel):
    """Everything needed to follow a queued job, including after a restart: keep it, and the job is findable."""

    model_config = ConfigDict(frozen=True)

    endpoint_id: str
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None = None


class QueueStatus(BaseModel):
    """A status report. fal has no FAILED or CANCELLED: a failed job is COMPLETED, sometimes with ``error``."""

    model_config = ConfigDict(extra="allow")

    status: QueueState
    request_id: str | None = None
    queue_position: int | None = None
    logs: list[LogEntry] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None

    @property
    def done(self) -> bool:
        """Whether the job will not change any more (succeeded or failed: only the result call tells)."""
        return self.status == "COMPLETED"


class CancelResult(BaseModel):
    """fal's answer to a cancel: ``accepted`` is false when the job had already finished."""

    accepted: bool
    detail: str


class HistoryItem(BaseModel):
    """One request in fal's request history (the platform API): enough to find a submission again."""

    model_config = ConfigDict(extra="allow")

    request_id: str
    endpoint_id: str | None = None
    sent_at: str | None = None
    started_at: str | None = None
    status: str | None = None
    json_input: Any = Field(default=None, description="With expand=payloads: the input as fal received it.")
