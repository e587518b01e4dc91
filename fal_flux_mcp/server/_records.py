"""What the job journal stores, as typed records, and how each becomes a table row and back.

``JobRecord`` has no field for keys or headers and rejects unknown fields, and the table has exactly one
column per field, so a secret has nowhere to go.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
Charge = Literal["reserved", "final", "released", "possibly_charged"]

#: Statuses a job never leaves: fal has nothing more to say about it.
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


STATUSES: tuple[str, ...] = get_args(JobStatus)
JSON_FIELDS = frozenset({"arguments", "result"})
TIME_FIELDS = frozenset({"created_at", "updated_at", "completed_at"})
IMMUTABLE_FIELDS = frozenset({"job_id", "owner", "created_at", "updated_at"})

#: Who owns the work of a server without per-user identity (stdio, one person's HTTP server).
LOCAL_OWNER = "local"


def utc_now() -> datetime:
    """Now, in UTC (every time the journal stores is UTC)."""
    return datetime.now(UTC)


class JobRecord(BaseModel):
    """One submitted fal job, as the journal stores it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(min_length=1, description="fal's request id.")
    owner: str = Field(
        default=LOCAL_OWNER,
        min_length=1,
        description="The user it belongs to (the token's subject under OAuth); no one else sees it.",
    )
    endpoint_id: str = Field(min_length=1)
    status_url: str
    response_url: str
    cancel_url: str
    arguments: dict[str, JsonValue] = Field(description="The fal input exactly as sent.")
    prompt: str = ""
    status: JobStatus = "queued"
    queue_position: int | None = None
    cost_usd: float | None = None
    webhook_url: str | None = None
    error: str | None = None
    result: dict[str, JsonValue] | None = Field(
        default=None, description="The finished tool result as JSON, built once and served again."
    )
    created_at: AwareDatetime = Field(default_factory=utc_now)
    updated_at: AwareDatetime = Field(default_factory=utc_now)
    completed_at: AwareDatetime | None = None
    pending_save: bool = Field(
        default=False, description="A completed job with an image not saved yet: saving is retried."
    )
    charge: Charge = Field(
        default="reserved",
        description="What cost_usd is: the estimate reserved before submit, the final cost, released "
        "(fal never ran it, or never charges the failure) or possibly charged (fal may bill it).",
    )
    unit_price: float | None = Field(default=None, description="USD per unit when it was submitted.")
    price_source: str | None = Field(default=None, description="Where unit_price came from.")
    approval: str | None = Field(default=None, description="How spending on it was allowed.")
    input_megapixels: int = Field(
        default=0, description="Input megapixels fal bills with it (models that count input images)."
    )

    @field_validator("created_at", "updated_at", "completed_at")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    @property
    def is_terminal(self) -> bool:
        """Whether fal is done with this job (completed, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


COLUMNS: tuple[str, ...] = tuple(JobRecord.model_fields)

IntentState = Literal["pending", "unconfirmed"]


class SubmitIntent(BaseModel):
    """A submission about to be sent to fal, recorded first so that a crash cannot lose the job.

    It becomes a ``JobRecord`` when fal answers. One left over (a crash between fal's answer and the
    journal write, an answer lost on the way) is looked up in fal's request history by its input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    intent_id: str = Field(min_length=1)
    owner: str = Field(default=LOCAL_OWNER, min_length=1, description="The user who asked for it.")
    endpoint_id: str = Field(min_length=1)
    arguments: dict[str, JsonValue] = Field(description="The fal input exactly as sent.")
    prompt: str = ""
    cost_usd: float | None = None
    webhook_url: str | None = None
    created_at: AwareDatetime = Field(default_factory=utc_now)
    state: IntentState = Field(
        default="pending",
        description="pending: being reconciled; unconfirmed: fal's history cannot be read with this key.",
    )
    note: str | None = Field(default=None, description="What reconciliation found so far.")
    unit_price: float | None = None
    price_source: str | None = None
    approval: str | None = None
    input_megapixels: int = 0

    @field_validator("created_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


INTENT_COLUMNS: tuple[str, ...] = tuple(SubmitIntent.model_fields)


def stored_time(moment: datetime) -> str:
    """A time as the journal stores it: fixed-width UTC ISO text, so SQL's text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def to_row(record: JobRecord) -> dict[str, Any]:
    """A job as a table row: JSON fields as text, times as fixed-width UTC text."""
    row: dict[str, Any] = record.model_dump()
    for name in JSON_FIELDS:
        if row[name] is not None:
            row[name] = json.dumps(row[name], ensure_ascii=False, separators=(",", ":"))
    for name in TIME_FIELDS:
        if row[name] is not None:
            row[name] = stored_time(row[name])
    return row


def intent_row(intent: SubmitIntent) -> dict[str, Any]:
    """An intent as a table row."""
    row: dict[str, Any] = intent.model_dump()
    row["arguments"] = json.dumps(row["arguments"], ensure_ascii=False, separators=(",", ":"))
    row["created_at"] = intent.created_at.isoformat(timespec="microseconds")
    return row


def intent_from_row(row: Any) -> SubmitIntent:
    """An intent read back from its row."""
    values: dict[str, Any] = {name: row[name] for name in INTENT_COLUMNS}
    values["arguments"] = json.loads(values["arguments"])
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    return SubmitIntent.model_validate(values)


def from_row(row: Any) -> JobRecord:
    """A job read back from its row."""
    values: dict[str, Any] = {name: row[name] for name in COLUMNS}
    for name in JSON_FIELDS:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    for name in TIME_FIELDS:
        if values[name] is not None:
            values[name] = datetime.fromisoformat(values[name])
    return JobRecord.model_validate(values)
