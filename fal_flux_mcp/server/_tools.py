"""The MCP tools. Each is a typed, documented function; the work is done by ``JobService``.

Errors a user or model can fix become tool errors (``isError: true``) at one boundary,
``_tool_errors``, with a message that says what to change. A job that reached fal is never reported
as a bare error: its id is always in the answer, so it can be found again.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Resolve
from mcp.types import (
    CallToolResult,
    TextContent,
    ToolAnnotations,
)
from pydantic import BaseModel

from fal_flux_mcp.fal import FalError
from fal_flux_mcp.server._app import AppState, FluxServer
from fal_flux_mcp.server._approval import Approval, approval_of, edit_spend_approval, spend_approval
from fal_flux_mcp.server._apps import tool_meta
from fal_flux_mcp.server._cancel import cancel, stop_waiting
from fal_flux_mcp.server._catalog import ModelList, model_list
from fal_flux_mcp.server._editing import EditorChoice, EditParams, as_generation, choose_editor
from fal_flux_mcp.server._errors import JobError
from fal_flux_mcp.server._flat import flat_arguments
from fal_flux_mcp.server._identity import require_user
from fal_flux_mcp.server._ledger import usd
from fal_flux_mcp.server._lookup import find
from fal_flux_mcp.server._overview import THUMBNAILS_KEY, Gallery, GalleryParams, gallery, recent, thumbnails
from fal_flux_mcp.server._replies import Progress, job_result
from fal_flux_mcp.server._roots import allowed_dirs
from fal_flux_mcp.server._schemas import (
    CancelParams,
    CancelResultOut,
    GenerationParams,
    JobResult,
    NoParams,
    SpendReport,
    StatusParams,
    SubmitParams,
    UploadParams,
    UploadResult,
    status_params,
)
from fal_flux_mcp.server._submit import submit
from fal_flux_mcp.server._uploads import UploadRefused, decode_image_data, open_local_image

logger = logging.getLogger("fal_flux_mcp.server")

_GENERATE = ToolAnnotations(
    title="Generate image",
    read_only_hint=False,
    destructive_hint=False,
    idempotent_hint=False,
    open_world_hint=True,
)
_SUBMIT = _GENERATE.model_copy(update={"title": "Submit image job"})
_EDIT = _GENERATE.model_copy(update={"title": "Edit image"})
_READ = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=True)
_CANCEL = ToolAnnotations(
    title="Cancel job",
    read_only_hint=False,
    destructive_hint=True,
    idempotent_hint=True,
    open_world_hint=True,
)
_UPLOAD = ToolAnnotations(
    title="Upload image",
    read_only_hint=False,
    destructive_hint=False,
    idempotent_hint=False,
    open_world_hint=True,
)


@contextmanager
def _tool_errors() -> Iterator[None]:
    """The one place where our errors become MCP tool errors with their actionable message."""
    try:
        yield
    except (JobError, UploadRefused) as exc:
        raise ToolError(str(exc)) from None
    except FalError as exc:
        raise ToolError(exc.message) from None


def _with_choice(result: JobResult, choice: EditorChoice | None) -> JobResult:
    """``result`` saying which editor ran and why, for ``edit_image``."""
    if choice is None:
        return result
    sentence = choice.sentence()
    return result.model_copy(update={"model_choice": sentence, "message": f"{sentence} {result.message}"})


def _state(ctx: Context[AppState]) -> AppState:
    return ctx.request_context.lifespan_context


def _tool(
    server: FluxServer, name: str, params: type[BaseModel], *, title: str, annotations: ToolAnnotations
) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    """Register ``fn`` as a tool taking ``params``' fields, described by its docstring.

    The docstring is dedented (clients show descriptions as they are) and its ``{wait_seconds}`` is
    the server's real wait limit, so no description promises more than the settings allow.
    """

    def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
        description = inspect.cleandoc(fn.__doc__ or "").format(
            wait_seconds=f"{server.flux_settings.wait_seconds:g}"
        )
        server.argument_models[name] = params
        return server.tool(
            name=name, title=title, annotations=annotations, description=description, meta=tool_meta(name)
        )(flat_arguments(params)(fn))

    return decorate


def register_tools(server: FluxServer) -> None:
    """Add fal-flux-mcp's tools to ``server``."""
    capped_status_params = status_params(server.flux_settings.wait_seconds)

    @_tool(server, "generate_image", GenerationParams, title="Generate image", annotations=_GENERATE)
    async def generate_image(
        params: GenerationParams,
        ctx: Context[AppState],
        approval: Annotated[Approval, Resolve(spend_approval)],
    ) -> Annotated[CallToolResult, JobResult]:
        """Generate images with a FLUX model on fal.ai and return them.

        Waits up to {wait_seconds} seconds, reporting progress. Finished: previews you can see, the fal URLs,
        the saved file paths and resource links. Not finished in time: status 'in_progress' with a
        job_id to pass to check_status (the job keeps running and nothing is lost). Costs money: over
        the user's limits the user is asked first (max_cost_usd can only lower the limit).
        """
        return await _run_and_wait(ctx, params, approval)

    @_tool(server, "edit_image", EditParams, title="Edit image", annotations=_EDIT)
    async def edit_image(
        params: EditParams,
        ctx: Context[AppState],
        approval: Annotated[Approval, Resolve(edit_spend_approval)],
    ) -> Annotated[CallToolResult, JobResult]:
        """Edit an image by describing the change ('make it brighter', 'remove the car'), on fal.ai.

        Give the image as image_url (or several as image_urls): an https URL, a local file, or a previous
        result flux://images/{{job_id}}/{{index}} (so 'make it brighter' works on the last image). With
        mask_url only the mask's white part changes. The model is chosen for the inputs unless given,
        and the result says which. Waits up to {wait_seconds} seconds like generate_image; costs money.
        """
        choice = choose_editor(params.model, params.image_url, params.image_urls, params.mask_url)
        return await _run_and_wait(ctx, as_generation(params, choice), approval, choice=choice)

    async def _run_and_wait(
        ctx: Context[AppState],
        params: GenerationParams,
        approval: Approval,
        *,
        choice: EditorChoice | None = None,
    ) -> CallToolResult:
        """Submit, follow with progress up to the wait limit, and answer; a job never becomes a bare error."""
        state = _state(ctx)
        progress = Progress(ctx)
        owner = require_user(ctx)
        with _tool_errors():
            record = await submit(
                state.jobs,
                params,
                owner,
                allowed_dirs=functools.partial(allowed_dirs, ctx, state),
                approval=approval_of(approval),
            )
        await progress.say(f"Submitted job {record.job_id} to {record.endpoint_id}")
        wait = state.settings.wait_seconds
        try:
            record, _ = await state.jobs.follow(record, seconds=wait, logs=True, on_status=progress.on_status)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await stop_waiting(state.jobs, record)
            raise
        except FalError as exc:
            # Submitted and paid: answer with the job id, never a bare error.
            state.jobs.follow_in_background(record)
            result = state.jobs.describe(record).model_copy(
                update={
                    "message": f"Lost contact with fal while waiting ({exc.message}). The job continues; "
                    f"call check_status with job_id '{record.job_id}'."
                }
            )
            return await job_result(state, record, result=_with_choice(result, choice))
        if not record.is_terminal:
            state.jobs.follow_in_background(record)
            result = state.jobs.describe(record, waited=wait)
            return await job_result(state, record, result=_with_choice(result, choice))
        return await job_result(state, record, result=_with_choice(state.jobs.describe(record), choice))

    @_tool(server, "submit_job", SubmitParams, title="Submit image job", annotations=_SUBMIT)
    async def submit_job(
        params: SubmitParams,
        ctx: Context[AppState],
        approval: Annotated[Approval, Resolve(spend_approval)],
    ) -> Annotated[CallToolResult, JobResult]:
        """Queue a FLUX generation on fal.ai and return at once with its job_id.

        Use for long jobs or many at a time; follow with check_status, stop with cancel_job. The images
        are saved locally when the job completes, even if nobody asks. Costs money.
        """
        state = _state(ctx)
        owner = require_user(ctx)
        with _tool_errors():
            record = await submit(
                state.jobs,
                params,
                owner,
                allowed_dirs=functools.partial(allowed_dirs, ctx, state),
                webhook_url=params.webhook_url,
                approval=approval_of(approval),
            )
        state.jobs.follow_in_background(record)
        return await job_result(state, record)

    @_tool(
        server,
        "check_status",
        capped_status_params,
        title="Check job status",
        annotations=_READ.model_copy(update={"title": "Check job status"}),
    )
    async def check_status(
        params: StatusParams, ctx: Context[AppState]
    ) -> Annotated[CallToolResult, JobResult]:
        """Report a job's status: queued, in_progress, completed (with its images), failed or cancelled.

        A completed job returns the same images, previews and paths as generate_image, every time.
        """
        state = _state(ctx)
        progress = Progress(ctx)
        owner = require_user(ctx)
        with _tool_errors():
            record = await find(state.jobs, params.job_id, owner)
            if record.pending_save:
                record = await state.jobs.retry_saves(record)
            logs: list[str] = []
            if not record.is_terminal:
                wait = params.wait_seconds  # bounded by FLUX_MCP_WAIT_SECONDS in the schema
                if wait > 0:
                    try:
                        record, logs = await state.jobs.follow(
                            record, seconds=wait, logs=params.include_logs, on_status=progress.on_status
                        )
                    except anyio.get_cancelled_exc_class():
                        state.jobs.follow_in_background(record)  # the client stopped waiting, not the job
                        raise
                else:
                    record, logs = await state.jobs.poll(record, logs=params.include_logs)
                if not record.is_terminal:
                    state.jobs.follow_in_background(record)
        result = state.jobs.describe(record, logs=logs if params.include_logs else None)
        unconfirmed = state.jobs.ledger.unconfirmed_submissions(owner)
        if unconfirmed:
            result = result.model_copy(update={"unconfirmed_submissions": unconfirmed})
        if result.status == "failed":  # a status report, not a failed call
            return CallToolResult(
                content=[TextContent(text=f"Job {result.job_id}: failed. {result.error}")],
                structured_content=result.model_dump(mode="json"),
            )
        return await job_result(state, record, result=result)

    @_tool(server, "cancel_job", CancelParams, title="Cancel job", annotations=_CANCEL)
    async def cancel_job(params: CancelParams, ctx: Context[AppState]) -> CancelResultOut:
        """Cancel a job on fal. A queued job never runs and costs nothing.

        A running job is asked to stop, which it does only if the model allows it; if it finishes anyway
        it is paid for and its images are saved. The answer says which of these happened.
        """
        state = _state(ctx)
        owner = require_user(ctx)
        with _tool_errors():
            record, cancelled, message = await cancel(state.jobs, params.job_id, owner)
        return CancelResultOut(
            job_id=record.job_id, status=record.status, cancelled=cancelled, message=message
        )

    @_tool(server, "upload_file", UploadParams, title="Upload image", annotations=_UPLOAD)
    async def upload_file(params: UploadParams, ctx: Context[AppState]) -> UploadResult:
        """Put a local image on fal's storage and return its URL, to use as image_url.

        Give path (a file inside the directories the user allowed) or data (base64). Only images
        (JPEG, PNG, WebP, GIF, AVIF) are accepted.
        """
        state = _state(ctx)
        fal = state.jobs.fal_for(require_user(ctx))  # a verified user's, with their own key if they have one
        limit = state.settings.upload_max_bytes
        with _tool_errors():
            if params.path is not None:
                dirs = await allowed_dirs(ctx, state)
                hard_links = state.settings.allow_hard_links
                with await open_local_image(params.path, dirs, limit, allow_hard_links=hard_links) as local:
                    url = await fal.upload_from_file(
                        local, size=local.size, content_type=local.content_type, file_name=local.file_name
                    )
                return UploadResult(
                    url=url, file_name=local.file_name, content_type=local.content_type, size=local.size
                )
            assert params.data is not None
            decoded = decode_image_data(params.data, params.file_name, limit)
            url = await fal.upload_bytes(
                decoded.data, content_type=decoded.content_type, file_name=decoded.file_name
            )
            return UploadResult(
                url=url,
                file_name=decoded.file_name,
                content_type=decoded.content_type,
                size=len(decoded.data),
            )

    @_tool(
        server,
        "list_models",
        NoParams,
        title="List models",
        annotations=_READ.model_copy(update={"title": "List models"}),
    )
    async def list_models(params: NoParams, ctx: Context[AppState]) -> ModelList:
        """The FLUX models available, grouped by task (text-to-image, image-edit, multi-image-edit,
        inpaint, image-variation): what each is for, the inputs it needs, its parameters, what it costs
        (and where that price came from) and its typical time."""
        return await model_list(_state(ctx).jobs.prices)

    @_tool(
        server,
        "open_gallery",
        GalleryParams,
        title="Open gallery",
        annotations=_READ.model_copy(update={"title": "Open gallery", "open_world_hint": False}),
    )
    async def open_gallery(
        params: GalleryParams, ctx: Context[AppState]
    ) -> Annotated[CallToolResult, Gallery]:
        """Show the user's recent images in the gallery app, to browse and filter by model and date, with
        what was spent. Costs nothing."""
        jobs = _state(ctx).jobs
        owner = require_user(ctx)
        shown = recent(jobs, params.limit, owner)
        view = gallery(jobs, shown, owner)
        today = view.spend.periods[0].total_usd
        text = f"Gallery of the {len(view.jobs)} most recent jobs; spent today: {usd(today)}."
        return CallToolResult(
            content=[TextContent(text=text)],
            structured_content=view.model_dump(mode="json"),
            _meta={THUMBNAILS_KEY: await thumbnails(jobs, shown)},
        )

    @_tool(
        server,
        "get_spend",
        NoParams,
        title="Get spend",
        annotations=_READ.model_copy(update={"title": "Get spend", "open_world_hint": False}),
    )
    async def get_spend(params: NoParams, ctx: Context[AppState]) -> SpendReport:
        """What was spent on fal: today, this month and the last 30 days, by model; reserved, final and
        released amounts; the user's budgets and what is left; the 10 most expensive jobs."""
        return _state(ctx).jobs.ledger.report(require_user(ctx))
