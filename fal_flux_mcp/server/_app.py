"""Building the MCP server: its shared state, its lifespan, and what it lists as resources.

The state (settings, one fal client, the journal, the job service) lives in the lifespan object, as in
the SDK's examples. Jobs left unfinished by an earlier run are picked up again at start, so a restart
loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ResourceUpdated,
    ServerEvent,
)
from mcp.types import (
    CallToolResult,
    ImageContent,
    InputRequiredResult,
    ListResourcesResult,
    ListToolsResult,
    PaginatedRequestParams,
    Resource,
    TextContent,
    Tool,
)
from pydantic import AnyUrl, BaseModel

from fal_flux_mcp._version import __version__
from fal_flux_mcp.server._apps import build_apps, client_supports_apps, for_client
from fal_flux_mcp.server._arguments import check_arguments
from fal_flux_mcp.server._events import ImagesChanged, JobChanged, OwnersBus
from fal_flux_mcp.server._identity import current_user, user_for
from fal_flux_mcp.server._images import sniff_content_type
from fal_flux_mcp.server._jobs import JobService
from fal_flux_mcp.server._journal import JobRecord, Journal, open_journal
from fal_flux_mcp.server._retention import keep_pruning
from fal_flux_mcp.server._schemas import image_name, image_uri, job_uri
from fal_flux_mcp.server._user_keys import NEEDS_KEY
from fal_flux_mcp.settings import Settings

if TYPE_CHECKING:
    from fal_flux_mcp.server._bus_postgres import PostgresSubscriptionBus

logger = logging.getLogger("fal_flux_mcp.server")

INSTRUCTIONS = """\
fal-flux-mcp makes images with fal.ai's FLUX models.
- generate_image waits up to {wait_seconds} s and returns the images (previews you can see, URLs, saved file
  paths). If it answers with status 'in_progress' or 'queued', call check_status with its job_id.
- For long or many jobs, submit_job returns at once; follow with check_status, stop with cancel_job.
- To use a local picture as input (Redux variations, Kontext edits, ultra image prompts), pass its path
  as image_url, or upload_file it first.
- list_models gives each model's purpose, parameters, price and typical time.
Generation costs money on the user's fal account: cost_usd in each result is the estimate."""

#: How many recent images ``resources/list`` shows.
RECENT_IMAGES = 50


@dataclass
class AppState:
    """What every tool and resource shares for the life of the server."""

    settings: Settings
    journal: Journal
    jobs: JobService


class FluxServer(MCPServer[AppState]):
    """``MCPServer`` that lists recent images as resources and serves each image with its real type."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        #: Every replica's events, filtered per user for the clients' listen streams (see ``_events``).
        self.bus = OwnersBus(open_bus(settings), settings)
        super().__init__(subscriptions=self.bus, extensions=[build_apps()], **kwargs)
        self.flux_settings = settings
        self.state: AppState | None = None
        #: Each tool's pydantic input model, checked before the SDK sees a call.
        self.argument_models: dict[str, type[BaseModel]] = {}
        #: Set once the client has listed the tools or called one: the server is in use.
        self.in_use = anyio.Event()

    def require_oauth(self, verifier: TokenVerifier, auth: AuthSettings) -> None:
        """Make the HTTP apps built from now on take only tokens ``verifier`` accepts (see ``_oauth``).

        Set here rather than at construction because the resource URL it advertises depends on where
        the server is served, which is decided after it is built.
        """
        self.settings.auth = auth
        self._token_verifier = verifier

    async def list_tools(self) -> list[Tool]:
        tools = await super().list_tools()
        self.in_use.set()
        return tools

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[AppState, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Refuse a call whose arguments are unknown or invalid, in words, before any of it runs.

        The SDK would drop an unknown argument silently (and the job would be paid for with the
        defaults) and report a bad value in pydantic's words; every tool's call passes here first.
        """
        self.in_use.set()
        model = self.argument_models.get(name)
        problem = check_arguments(name, model, arguments) if model is not None else None
        if problem is not None:
            logger.info("tool %s refused arguments %s", name, sorted(arguments))
            return CallToolResult(content=[TextContent(text=problem)], is_error=True)
        user = current_user(context) if context is not None else None
        keys = self.state.jobs.user_keys if self.state is not None else None
        if keys is not None and context is not None and user is not None and name in NEEDS_KEY:
            from fal_flux_mcp.server._key_prompt import ask_for_key

            if (answer := await ask_for_key(context, self.flux_settings, keys, user)) is not None:
                return answer
        result = await super().call_tool(name, arguments, context)
        return fit_result(result) if isinstance(result, CallToolResult) else result

    async def _handle_list_tools(
        self, ctx: ServerRequestContext[AppState], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        """The tools, with their apps only for a client that can show them (see ``_apps``)."""
        result = await super()._handle_list_tools(ctx, params)
        tools, _ = for_client(result.tools, None, apps=client_supports_apps(ctx))
        return result.model_copy(update={"tools": tools})

    async def _handle_list_resources(
        self, ctx: ServerRequestContext[AppState], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        result = await super()._handle_list_resources(ctx, params)
        _, resources = for_client([], result.resources, apps=client_supports_apps(ctx))
        return result.model_copy(update={"resources": resources})

    async def list_resources(self) -> list[Resource]:
        resources = await super().list_resources()
        owner = user_for(self.flux_settings)
        if self.state is None or owner is None:
            return resources
        for record in self.state.journal.recent(RECENT_IMAGES, owner):  # each user sees only their images
            images = (record.result or {}).get("images") or []
            for image in images:
                if not isinstance(image, dict):
                    continue
                index = int(image.get("index", 0))
                path = image.get("path")
                name = image_name(record.job_id, index, str(path) if path else None)
                resources.append(
                    Resource(
                        uri=image_uri(record.job_id, index),
                        name=name,
                        title=f"{record.prompt[:60] or 'image'} ({index + 1}/{len(images)})",
                        description=f"{record.endpoint_id}, seed {(record.result or {}).get('seed')}: {record.prompt[:200]}",
                        mime_type=str(image.get("content_type") or "image/jpeg"),
                    )
                )
            if len(resources) >= RECENT_IMAGES:
                break
        return resources

    async def read_resource(self, uri: AnyUrl | str, context: Context[AppState, Any] | None = None) -> Any:
        contents = await super().read_resource(uri, context)
        if not str(uri).startswith("flux://images/") or not isinstance(contents, Iterable):
            return contents
        return [
            ReadResourceContents(
                content=item.content,
                mime_type=(sniff_content_type(item.content) if isinstance(item.content, bytes) else None)
                or item.mime_type,
                meta=item.meta,
            )
            for item in contents
        ]


#: Clients refuse a tool result over 1 MiB ("result exceeds maximum length of 1048576"); stay under.
RESULT_LIMIT = 1_000_000
#: The longest text kept in a result that had to be cut down.
_CUT_TEXT = 20_000


def fit_result(result: CallToolResult) -> CallToolResult:
    """``result`` made to fit ``RESULT_LIMIT``: previews go first, then overlong texts are cut.

    Previews are budgeted to fit already; this is the guarantee for everything else (long logs, a
    message quoting a huge argument), so that no answer is lost to a client's size limit.
    """
    if len(result.model_dump_json(by_alias=True, exclude_none=True)) <= RESULT_LIMIT:
        return result
    content = [block for block in result.content if not isinstance(block, ImageContent)]
    if len(content) < len(result.content):
        content.append(TextContent(text="Previews were left out to keep this answer under 1 MB."))
    fitted = result.model_copy(update={"content": content})
    if len(fitted.model_dump_json(by_alias=True, exclude_none=True)) <= RESULT_LIMIT:
        return fitted
    return fitted.model_copy(
        update={
            "content": [_cut(block) for block in content],
            "structured_content": _cut_strings(fitted.structured_content),
        }
    )


def _cut(block: Any) -> Any:
    if isinstance(block, TextContent) and len(block.text) > _CUT_TEXT:
        return block.model_copy(
            update={"text": block.text[:_CUT_TEXT] + f"… (cut from {len(block.text):,} characters)"}
        )
    return block


def _cut_strings(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _CUT_TEXT:
        return value[:_CUT_TEXT] + "…"
    if isinstance(value, list):
        return [_cut_strings(item) for item in value[-200:]]  # the latest of a long list (log lines)
    if isinstance(value, dict):
        return {key: _cut_strings(item) for key, item in value.items()}
    return value


async def _warm_up_when_in_use(server: FluxServer) -> None:
    """Load the image path once the client is served its tools, so the first result is not slower.

    Started at once, the imports would compete with the answer to the client's first requests.
    """
    from fal_flux_mcp.server._warm import warm_up

    await server.in_use.wait()
    await anyio.sleep(_WARM_UP_AFTER)  # the answer that set ``in_use`` is still being written
    try:
        await anyio.to_thread.run_sync(warm_up)
    except Exception:  # a failed warm-up only means the first job loads these itself
        logger.exception("warming up the image path failed")


#: How long after the first tools/list (or call) the warm-up starts.
_WARM_UP_AFTER = 0.05


def open_bus(settings: Settings) -> InMemorySubscriptionBus | PostgresSubscriptionBus:
    """Where change notifications go: through PostgreSQL to every replica sharing the journal, else in memory."""
    if settings.database_url is not None:
        from fal_flux_mcp.server._bus_postgres import PostgresSubscriptionBus

        return PostgresSubscriptionBus(settings.database_url.get_secret_value())
    return InMemorySubscriptionBus()


def _wake_waiters(jobs: JobService) -> Callable[[ServerEvent], None]:
    """A bus listener that wakes this replica's waits for a job another replica finishes."""

    def on_event(event: ServerEvent) -> None:
        if isinstance(event, ResourceUpdated) and event.uri.startswith(_JOB_URI):
            jobs.follower.job_changed(event.uri.removeprefix(_JOB_URI))

    return on_event


_JOB_URI = job_uri("")


def build_server(settings: Settings | None = None) -> FluxServer:
    """The fal-flux-mcp MCP server, configured by ``settings`` (default: from the environment)."""
    from fal_flux_mcp.server._resources import register_resources
    from fal_flux_mcp.server._tools import register_tools

    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(server: MCPServer[AppState]) -> AsyncIterator[AppState]:
        assert isinstance(server, FluxServer)
        journal = open_journal(settings)
        jobs = JobService(settings, journal)
        stop_waking = server.bus.subscribe_all(_wake_waiters(jobs))
        shared_bus = None if isinstance(server.bus.inner, InMemorySubscriptionBus) else server.bus.inner
        async with anyio.create_task_group() as group:
            jobs.background.task_group = group
            if shared_bus is not None:
                await group.start(shared_bus.run)  # hears the other replicas from now on

            async def announce(record: JobRecord) -> None:
                await server.bus.publish(JobChanged(uri=job_uri(record.job_id), owner=record.owner))
                if record.status == "completed":
                    await server.bus.publish(ImagesChanged(owner=record.owner))

            jobs.on_finished = announce
            state = AppState(settings=settings, journal=journal, jobs=jobs)
            server.state = state
            group.start_soon(jobs.follower.run)  # claims and follows what an earlier run left unfinished
            for intent in journal.intents():  # submissions whose answer a crash lost
                jobs.reconcile_in_background(intent)
            group.start_soon(_warm_up_when_in_use, server)
            group.start_soon(keep_pruning, settings, journal, jobs.saver.previews_dir)
            try:
                yield state
            finally:
                server.state = None
                stop_waking()
                group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await jobs.follower.stop()
                    await jobs.aclose()
                    if shared_bus is not None:
                        await shared_bus.aclose()
                journal.close()

    server = FluxServer(
        settings,
        name="fal-flux-mcp",
        title="FLUX images (fal.ai)",
        version=__version__,
        instructions=INSTRUCTIONS.format(wait_seconds=f"{settings.wait_seconds:g}"),
        log_level=settings.log_level,
        website_url="https://fal.ai/models/fal-ai/flux-pro/v1.1-ultra",
        lifespan=lifespan,
        request_state_security=request_state_security(settings),
    )
    register_tools(server)
    register_resources(server)
    return server


def request_state_security(settings: Settings) -> RequestStateSecurity | None:
    """The keys sealing a spend question's ``requestState``: shared by every replica when configured.

    The client echoes the sealed state on its retry, which a load balancer may send to another replica:
    that one can open it only under the same key and the same server name (the token's audience), which
    every fal-flux-mcp has. None: the SDK's key of this process alone.
    """
    keys = settings.request_state_key_ring()
    return None if keys is None else RequestStateSecurity(keys=keys)
