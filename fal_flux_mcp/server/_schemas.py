"""What each MCP tool accepts and returns: the single source of truth for the tools' JSON schemas.

Inputs are flat (no nested objects, no top-level ``anyOf``: several clients reject those), every
property is described, enums are ``Literal`` and bounds are fal's. An optional field is published as
its plain type without ``null`` and means "the model's default"; the model's own defaults are in
``fal_flux_mcp.models``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from fal_flux_mcp.models import AspectRatio, EditImageSizePreset, OutputFormat, SafetyTolerance
from fal_flux_mcp.registry import DEFAULT_MODEL, MODELS

ModelId: TypeAlias = Literal[
    "fal-ai/flux-pro/v1.1-ultra",
    "fal-ai/flux-pro/v1.1-ultra/redux",
    "fal-ai/flux-pro/v1.1",
    "fal-ai/flux-pro/v1.1/redux",
    "fal-ai/flux-pro/v1/redux",
    "fal-ai/flux-pro/kontext",
    "fal-ai/flux-pro/kontext/max",
    "fal-ai/flux-pro/kontext/multi",
    "fal-ai/flux-pro/kontext/max/multi",
    "fal-ai/flux-pro/v1/fill",
    "fal-ai/flux-pro/v1.1-ultra-finetuned",
    "fal-ai/flux-2-pro",
    "fal-ai/flux-2-pro/edit",
    "fal-ai/flux-2-flex",
    "fal-ai/flux-2-flex/edit",
    "fal-ai/flux-2-max/edit",
    "fal-ai/flux-2/flash",
    "fal-ai/flux/dev",
    "fal-ai/flux/schnell",
]
assert set(ModelId.__args__) == set(MODELS), "ModelId must list exactly the registry's models"  # type: ignore[attr-defined]

JobState: TypeAlias = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


def _drop_null(schema: dict[str, Any]) -> None:
    """Publish ``X | None`` as plain ``X``: None only means "not given", which omitting the key says."""
    variants = schema.pop("anyOf", None)
    if variants is None:
        return
    kept = [v for v in variants if v.get("type") != "null"]
    if len(kept) == 1:
        schema.update(kept[0])
    else:
        schema["anyOf"] = kept
    if schema.get("default", 0) is None:
        del schema["default"]


def optional(description: str, **constraints: Any) -> Any:
    """A ``Field`` for an optional tool argument: not required, no default, no ``null`` in the schema."""
    return Field(default=None, description=description, json_schema_extra=_drop_null, **constraints)


def _int_to_str(value: object) -> object:
    # LLMs often send safety_tolerance as a number; fal wants the string.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Tolerance = Annotated[SafetyTolerance, BeforeValidator(_int_to_str)]


class GenerationParams(BaseModel):
    """The generation parameters shared by ``generate_image`` and ``submit_job``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        description="What the image should show, or for the edit models the change to make. May be empty "
        "only for the Redux models, which vary image_url.",
        max_length=10_000,
    )
    model: ModelId = Field(
        default=DEFAULT_MODEL,
        description="fal endpoint id. Text to image: fal-ai/flux-pro/v1.1-ultra (best FLUX.1, ~4 MP), "
        "fal-ai/flux-2-pro, fal-ai/flux-2-flex, fal-ai/flux-pro/v1.1, fal-ai/flux/dev, fal-ai/flux-2/flash "
        "and fal-ai/flux/schnell (fastest, cheapest), fal-ai/flux-pro/v1.1-ultra-finetuned (your "
        "fine-tune). Variations of image_url: the /redux models. Editing (prefer edit_image): "
        "fal-ai/flux-pro/kontext, .../kontext/max, the FLUX.2 /edit models, .../kontext/multi and "
        ".../kontext/max/multi for several images, fal-ai/flux-pro/v1/fill with a mask. list_models "
        "gives prices and parameters.",
    )
    aspect_ratio: AspectRatio | None = optional(
        "Aspect ratio; works with every model but Fill (turned into an image_size where the model needs one)."
    )
    image_size: EditImageSizePreset | None = optional(
        "Size preset, only for models that take image_size (v1.1, the v1.x redux models, dev, schnell, "
        "FLUX.2); 'auto' (FLUX.2 edits' default) follows the input image. Prefer aspect_ratio."
    )
    num_images: int | None = optional(
        "How many images to generate, 1-4 (default 1); FLUX.2 [pro], [flex] and [max] make one.", ge=1, le=4
    )
    seed: int | None = optional("Seed for reproducible output: the same seed and prompt give the same image.")
    output_format: OutputFormat | None = optional(
        "File format of the images (default jpeg; FLUX.2 [flash]: png)."
    )
    safety_tolerance: Tolerance | None = optional(
        "FLUX pro moderation level, '1' strictest to '6' most permissive (FLUX.2: up to '5'; default '2')."
    )
    enhance_prompt: bool | None = optional("Let the model expand the prompt for more detail (default false).")
    enable_prompt_expansion: bool | None = optional(
        "FLUX.2 [flash]: let the model expand the prompt (default false)."
    )
    raw: bool | None = optional("Ultra models only: a less processed, more natural look (default false).")
    image_url: str | None = optional(
        "Input image: an https URL, a data URI, a local file path inside the allowed directories (uploaded "
        "first), or a previous result flux://images/{job_id}/{index}. Required for the Redux, Kontext and "
        "Fill models; an optional image prompt for ultra.",
        min_length=1,
    )
    image_urls: list[Annotated[str, Field(min_length=1)]] | None = optional(
        "Input images, for the models that take several (FLUX.2 edits, Kontext multi); each as image_url.",
        min_length=1,
    )
    mask_url: str | None = optional(
        "Fill only: the mask, an image of exactly image_url's size, white where the image should change; "
        "given like image_url.",
        min_length=1,
    )
    image_prompt_strength: float | None = optional(
        "Ultra models: how strongly image_url steers the result, 0-1 (default 0.1).", ge=0, le=1
    )
    finetune_id: str | None = optional(
        "fal-ai/flux-pro/v1.1-ultra-finetuned: the id of your fine-tune on fal.", min_length=1
    )
    finetune_strength: float | None = optional(
        "fal-ai/flux-pro/v1.1-ultra-finetuned: how strongly the fine-tune applies, 0-2.", ge=0, le=2
    )
    num_inference_steps: int | None = optional(
        "Denoising steps for dev (1-50, default 28), schnell (1-12, default 4), FLUX.2 [flex] (2-50) and "
        "the v1.x redux models.",
        ge=1,
        le=50,
    )
    guidance_scale: float | None = optional(
        "How closely to follow the prompt (default 3.5): 1-20 for dev, kontext and the v1.x redux models, "
        "1.5-10 for FLUX.2 [flex], 0-20 for FLUX.2 [flash] (default 2.5).",
        ge=0,
        le=20,
    )
    enable_safety_checker: bool | None = optional(
        "dev, schnell, ultra and FLUX.2: black out NSFW output (default true)."
    )
    max_cost_usd: float | None = optional(
        "The most this call may cost, in USD. It can only lower the user's limit for this call, never "
        "raise it: a call over the user's limits is asked about, or refused, whatever this says.",
        ge=0,
    )


class SubmitParams(GenerationParams):
    """``submit_job``'s input: the generation parameters plus an optional webhook."""

    webhook_url: str | None = optional(
        "An https URL that fal POSTs the result to when the job finishes.", pattern=r"^https?://"
    )


JobId = Annotated[
    str, Field(min_length=1, max_length=200, description="The job_id from generate_image or submit_job.")
]


class StatusParams(BaseModel):
    """``check_status``'s input; ``status_params`` gives the class with this server's wait limit."""

    model_config = ConfigDict(extra="forbid")

    job_id: JobId
    wait_seconds: float = Field(
        default=0, ge=0, description="Wait up to this long for the job to finish before answering."
    )
    include_logs: bool = Field(default=False, description="Include fal's log lines.")


def status_params(max_wait: float) -> type[StatusParams]:
    """``StatusParams`` whose ``wait_seconds`` is bounded, and described, by ``FLUX_MCP_WAIT_SECONDS``.

    A bound that the schema states and the server enforces: a larger value is an error that says the
    limit, never a shorter wait than the caller asked for without a word.
    """

    class CappedStatusParams(StatusParams):
        wait_seconds: float = Field(
            default=0,
            ge=0,
            le=max_wait,
            description=f"Wait up to this long (0-{max_wait:g} s, this server's limit) for the job to "
            "finish before answering.",
        )

    return CappedStatusParams


class NoParams(BaseModel):
    """The input of a tool that takes no arguments (any argument given is an error)."""

    model_config = ConfigDict(extra="forbid")


class CancelParams(BaseModel):
    """``cancel_job``'s input."""

    model_config = ConfigDict(extra="forbid")

    job_id: JobId


class UploadParams(BaseModel):
    """``upload_file``'s input: a local file, or the image's bytes inline."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = optional(
        "Absolute path of a local image inside the allowed directories.", min_length=1
    )
    data: str | None = optional("The image as base64 or a data: URI, instead of path.", min_length=1)
    file_name: str | None = optional("Name to store data under, e.g. photo.png.", max_length=255)

    @model_validator(mode="after")
    def _one_source(self) -> UploadParams:
        if (self.path is None) == (self.data is None):
            raise ValueError("give exactly one of path (a local file) or data (base64 or a data: URI)")
        return self


def job_uri(job_id: str) -> str:
    """The MCP resource of a job."""
    return f"flux://jobs/{job_id}"


def image_uri(job_id: str, index: int) -> str:
    """The MCP resource of one of a job's images."""
    return f"flux://images/{job_id}/{index}"


def image_name(job_id: str, index: int, path: str | None) -> str:
    """What a client shows for an image resource: the saved file's name, else the job and index."""
    return Path(path).name if path else f"{job_id}-{index}"


SaveState: TypeAlias = Literal["saved", "pending", "gone"]


class ImageInfo(BaseModel):
    """One finished image: where it is on fal, where it was saved, and how to read it as a resource."""

    index: int = Field(description="Position of the image in the job, from 0.")
    url: str = Field(description="The image on fal's CDN (public, kept by fal for at least 7 days).")
    path: str | None = Field(description="Absolute path of the saved file; null until it is saved.")
    save_state: SaveState = Field(
        default="saved",
        description="saved; pending (not saved yet, retried until it is); gone (fal's URL no longer "
        "answers, so it can never be saved).",
    )
    save_error: str | None = Field(default=None, description="Why the file is not saved, when it is not.")
    resource_uri: str = Field(description="MCP resource with the full-resolution bytes.")
    width: int | None = Field(description="Width in pixels.")
    height: int | None = Field(description="Height in pixels.")
    content_type: str = Field(description="MIME type of the image.")
    nsfw: bool = Field(description="True when fal's checker flagged the image and blacked it out.")

    @model_validator(mode="before")
    @classmethod
    def _unsaved_before_retries(cls, data: Any) -> Any:
        # Results journalled before saves were retried have no save_state: no path meant "failed".
        if isinstance(data, dict) and "save_state" not in data and data.get("path") is None:
            return {**data, "save_state": "pending"}
        return data


class UnconfirmedSubmission(BaseModel):
    """A submission whose answer was lost and which fal's request history could not confirm."""

    model: str = Field(description="fal endpoint id it was sent to.")
    prompt: str = Field(description="Its prompt.")
    submitted_at: datetime = Field(description="When it was sent (UTC).")
    note: str = Field(description="What is known, and what to do.")


class JobResult(BaseModel):
    """A job's state, and once it completed, its images. Everything the model needs is here."""

    job_id: str = Field(description="fal request id; pass it to check_status or cancel_job.")
    status: JobState = Field(description="queued, in_progress, completed, failed or cancelled.")
    model: str = Field(description="fal endpoint id the job ran on.")
    prompt: str = Field(description="The prompt as sent (or as the model rewrote it, once completed).")
    seed: int | None = Field(default=None, description="Seed actually used; reuse it to reproduce an image.")
    cost_usd: float | None = Field(
        default=None, description="Estimated cost before the job finished; its final cost once completed."
    )
    price_source: str | None = Field(
        default=None, description="Where the price came from: fal's pricing API, or the built-in list."
    )
    approval: str | None = Field(
        default=None, description="How the spend was allowed: within the limits, or approved by the user."
    )
    budget_left_today_usd: float | None = Field(
        default=None,
        description="What is left of today's budget (FLUX_MCP_DAILY_BUDGET_USD); null: no limit.",
    )
    budget_left_month_usd: float | None = Field(
        default=None, description="What is left of this month's budget; null: no limit."
    )
    images: list[ImageInfo] = Field(default_factory=list, description="The images, once completed.")
    queue_position: int | None = Field(default=None, description="Jobs ahead of this one while queued.")
    resource_uri: str = Field(description="MCP resource describing the job (flux://jobs/{job_id}).")
    message: str = Field(description="What happened and what to do next.")
    model_choice: str | None = Field(
        default=None, description="edit_image: which model edited the image(s), and why it was chosen."
    )
    error: str | None = Field(default=None, description="Why the job failed, when it did.")
    logs: list[str] | None = Field(default=None, description="fal's log lines, when asked for.")
    created_at: datetime | None = Field(default=None, description="When the job was submitted (UTC).")
    completed_at: datetime | None = Field(default=None, description="When it finished (UTC).")
    unconfirmed_submissions: list[UnconfirmedSubmission] | None = Field(
        default=None,
        description="Submissions fal may have queued (and charged) that this key cannot confirm; do not "
        "submit them again.",
    )


class CancelResultOut(BaseModel):
    """What ``cancel_job`` did."""

    job_id: str = Field(description="The job.")
    status: JobState = Field(description="The job's state after the request.")
    cancelled: bool = Field(description="True if the cancel reached the job before it finished.")
    message: str = Field(description="What happened.")


class UploadResult(BaseModel):
    """A file now on fal's storage, usable as ``image_url``."""

    url: str = Field(description="Public URL of the uploaded file; pass it as image_url.")
    file_name: str = Field(description="Name it was stored under.")
    content_type: str = Field(description="MIME type detected from the content.")
    size: int = Field(description="Size in bytes.")


class PeriodSpend(BaseModel):
    """Money in one period: what counts against the budgets, and how it breaks down."""

    period: str = Field(description="today, this month or the last 30 days (local calendar).")
    total_usd: float = Field(description="What counts against the budgets: all but released amounts.")
    final_usd: float = Field(description="Final cost of completed jobs.")
    reserved_usd: float = Field(
        description="Reserved for jobs not finished yet, and submissions being looked up."
    )
    possibly_charged_usd: float = Field(description="Failed or stopped jobs fal may have billed.")
    released_usd: float = Field(description="Reserved, then given back: jobs fal never ran or never charges.")
    by_model: dict[str, float] = Field(description="total_usd per fal endpoint id.")


class Budgets(BaseModel):
    """The user's limits (null: no limit; their FLUX_MCP_USER_BUDGETS entry where set) and what is left."""

    max_usd_per_call: float | None = Field(description="FLUX_MCP_MAX_USD_PER_CALL.")
    daily_budget_usd: float | None = Field(description="FLUX_MCP_DAILY_BUDGET_USD.")
    monthly_budget_usd: float | None = Field(description="FLUX_MCP_MONTHLY_BUDGET_USD.")
    left_today_usd: float | None = Field(description="What is left of today's budget.")
    left_month_usd: float | None = Field(description="What is left of this month's budget.")


class CostlyJob(BaseModel):
    """One of the most expensive jobs."""

    job_id: str
    model: str
    prompt: str
    cost_usd: float
    charge: str = Field(description="reserved, final, released or possibly_charged.")
    created_at: datetime


class SpendReport(BaseModel):
    """What fal-flux-mcp spent on the user's fal account, from its journal."""

    periods: list[PeriodSpend] = Field(description="Today, this month and the last 30 days.")
    budgets: Budgets
    most_expensive: list[CostlyJob] = Field(description="The 10 most expensive jobs of the last 30 days.")
    unconfirmed_submissions: list[UnconfirmedSubmission] = Field(
        default_factory=list,
        description="Submissions fal may have queued (and charged) that this key cannot confirm.",
    )
    note: str = Field(description="What these figures are, and are not.")
