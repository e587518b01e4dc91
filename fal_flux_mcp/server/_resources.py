"""The MCP resources: a job as JSON, and an image's full-resolution bytes.

Both are read from the journal and the saved files, so they answer after a restart too. An image whose
file is gone is fetched again from fal's URL.
"""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from fal_flux_mcp.fal import FalError
from fal_flux_mcp.server._app import AppState, FluxServer
from fal_flux_mcp.server._errors import UnknownJobError
from fal_flux_mcp.server._identity import NO_USER, current_user, user_for
from fal_flux_mcp.server._jobs import JobService


def register_resources(server: FluxServer) -> None:
    """Add fal-flux-mcp's resources and resource templates to ``server``."""

    @server.resource(
        "flux://spend",
        name="spend",
        title="Spend on fal",
        description="What was spent today, this month and over 30 days, the budgets and what is left.",
        mime_type="application/json",
    )
    async def spend() -> str:
        # A static resource gets no Context (the SDK's rule); the running server's state is the same.
        if server.state is None:
            raise ResourceError("the server is not running")
        return server.state.jobs.ledger.report(_owner(user_for(server.flux_settings))).model_dump_json(
            indent=2
        )

    @server.resource(
        "flux://jobs/{job_id}",
        name="job",
        title="Image job",
        description="A generation job: its status, and once completed its images (URLs, paths, sizes).",
        mime_type="application/json",
    )
    async def job(job_id: str, ctx: Context) -> str:
        state: AppState = ctx.request_context.lifespan_context
        try:
            record = state.jobs.get(job_id, _owner(current_user(ctx)))
        except UnknownJobError as exc:
            raise ResourceNotFoundError(str(exc)) from None
        return state.jobs.describe(record).model_dump_json(indent=2)

    @server.resource(
        "flux://images/{job_id}/{index}",
        name="image",
        title="Generated image",
        description="The full-resolution bytes of image {index} (from 0) of a completed job.",
        mime_type="image/jpeg",
    )
    async def image(job_id: str, index: int, ctx: Context) -> bytes:
        state: AppState = ctx.request_context.lifespan_context
        try:
            return await image_bytes(state.jobs, job_id, index, _owner(current_user(ctx)))
        except (UnknownJobError, NoSuchImage) as exc:
            raise ResourceNotFoundError(str(exc)) from None
        except FalError as exc:
            raise ResourceError(
                f"the saved file is gone and fal's copy could not be fetched: {exc.message}"
            ) from None


def _owner(user: str | None) -> str:
    """The user a resource is read for; a resource error when the request carries none."""
    if user is None:
        raise ResourceError(NO_USER)
    return user


class NoSuchImage(LookupError):
    """The job has no image at that index (yet, or at all)."""


async def image_bytes(jobs: JobService, job_id: str, index: int, owner: str) -> bytes:
    """Image ``index`` (from 0) of ``owner``'s job: the saved file, or fal's copy when the file is gone.

    Raises ``UnknownJobError``, ``NoSuchImage``, or ``FalError`` when fal's copy cannot be fetched.
    """
    record = jobs.get(job_id, owner)
    images = jobs.describe(record).images
    if not 0 <= index < len(images):
        if record.status != "completed":
            raise NoSuchImage(f"job {job_id} is {record.status}; it has no images yet")
        raise NoSuchImage(f"job {job_id} has {len(images)} image(s); index {index} does not exist")
    info = images[index]
    if info.path:
        try:
            return await anyio.Path(info.path).read_bytes()
        except OSError:
            pass
    return await jobs.fal.download(info.url)
