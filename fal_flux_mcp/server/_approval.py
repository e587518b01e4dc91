"""The user's yes before money goes out: what a call would cost, and asking when it is over a limit.

``spend_approval`` runs before ``generate_image`` and ``submit_job``, ``edit_spend_approval`` before
``edit_image`` (SDK resolvers, so the question works in both protocol eras: mid-call on older
connections, as an input-required round trip on 2026-07-28). It prices the call; within the user's limits it asks nothing. Over a limit, a client that
can elicit shows the user a form (model, images, size, cost, what is left today) to approve or
decline; a client that cannot gets nothing to approve, and the tool answers with what the *user*
can change. The model cannot approve: ``max_cost_usd`` only lowers the limit for one call.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from mcp.server.elicitation import AcceptedElicitation, DeclinedElicitation, ElicitationResult
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.resolve import Elicit
from pydantic import BaseModel, Field, ValidationError

from fal_flux_mcp.models import output_size
from fal_flux_mcp.server._editing import choose_editor
from fal_flux_mcp.server._errors import JobError, SpendRefused
from fal_flux_mcp.server._identity import current_user
from fal_flux_mcp.server._ledger import usd
from fal_flux_mcp.server._roots import allowed_dirs
from fal_flux_mcp.server._schemas import GenerationParams

logger = logging.getLogger("fal_flux_mcp.server")


class SpendApproval(BaseModel):
    """The form the user answers: a yes or a no, nothing else (form mode asks for no secrets)."""

    approve: bool = Field(title="Approve this spend?", description="Submit the job and pay for it.")


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the resolver found without asking: within the limits, or why it could not ask."""

    verdict: Literal[
        "fits", "cannot_ask", "over_call_limit", "unpriced", "declined", "dismissed", "no_answer"
    ]
    reason: str = ""
    #: The limits are set by whoever runs a team's server (OAuth), not by the user in their own client.
    shared: bool = False


async def spend_approval(
    ctx: Context[Any, Any],
    model: str,
    num_images: int | None,
    aspect_ratio: str | None,
    image_size: str | None,
    image_url: str | None,
    image_urls: list[str] | None,
    mask_url: str | None,
    finetune_id: str | None,
    finetune_strength: float | None,
    max_cost_usd: float | None,
) -> Assessment | Elicit[SpendApproval]:
    """Price the call and, when it is over the user's limits, ask the user (when the client can)."""
    arguments = {
        "model": model,
        "num_images": num_images,
        "aspect_ratio": aspect_ratio,
        "image_size": image_size,
        "image_url": image_url,
        "image_urls": image_urls,
        "mask_url": mask_url,
        "finetune_id": finetune_id,
        "finetune_strength": finetune_strength,
    }
    return await _assess(ctx, arguments, max_cost_usd)


async def edit_spend_approval(
    ctx: Context[Any, Any],
    model: str | None,
    num_images: int | None,
    aspect_ratio: str | None,
    image_url: str | None,
    image_urls: list[str] | None,
    mask_url: str | None,
    max_cost_usd: float | None,
) -> Assessment | Elicit[SpendApproval]:
    """``spend_approval`` for ``edit_image``: the editor it will run on is the one priced."""
    choice = choose_editor(model, image_url, image_urls, mask_url)
    arguments = {
        "model": choice.endpoint_id,
        "num_images": num_images,
        "aspect_ratio": aspect_ratio,
        "image_url": image_url,
        "image_urls": image_urls,
        "mask_url": mask_url,
    }
    return await _assess(ctx, arguments, max_cost_usd)


async def _assess(
    ctx: Context[Any, Any], arguments: dict[str, Any], max_cost_usd: float | None
) -> Assessment | Elicit[SpendApproval]:
    """Price ``arguments`` (reading the input images' sizes where the price follows them) and ask
    the user when that is over a limit."""
    state = ctx.request_context.lifespan_context
    owner = current_user(ctx)
    if owner is None:
        return Assessment("unpriced")  # the tool refuses a call for no one itself
    try:
        params = GenerationParams.model_validate({"prompt": "-", **arguments})
        priced = await state.jobs.inputs.priced(params, functools.partial(allowed_dirs, ctx, state), owner)
        info, fal_input, input_sizes = priced.model, priced.fal_input, priced.input_sizes
        quote = await state.jobs.prices.quote(info, fal_input, input_sizes)
    except (JobError, ValidationError):
        return Assessment("unpriced")  # the tool itself refuses it, in its own words
    reason = state.jobs.ledger.over_limit(quote.cost_usd, owner, max_cost_usd=max_cost_usd)
    if reason is None:
        return Assessment("fits")
    if max_cost_usd is not None and quote.cost_usd > max_cost_usd:
        return Assessment("over_call_limit", reason)
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None or (elicitation.form is None and elicitation.url is not None):
        return Assessment("cannot_ask", reason, shared=state.settings.oauth)
    count = getattr(fal_input, "num_images", 1) or 1
    width, height = output_size(info.endpoint_id, fal_input, input_sizes)
    day_left, _ = state.jobs.ledger.left(owner)
    left = "no daily limit" if day_left is None else f"{usd(day_left)} left of today's budget"
    question = (
        f"Approve {usd(quote.cost_usd)} on fal.ai? {info.title} ({info.endpoint_id}), {count} image(s) of "
        f"{width}x{height}; estimated {usd(quote.cost_usd)} ({quote.source}); {left}. Asked because {reason}."
    )
    if not ctx.session.can_send_request:
        # 2026-07-28: the question travels in the answer and the client calls again with the user's
        # reply; nothing waits here, and a client that never calls again has spent nothing.
        return Elicit(question, SpendApproval)
    # An older connection asks mid-call: the call waits for the user, but not for ever.
    with anyio.move_on_after(state.settings.approval_timeout_seconds):
        try:
            outcome = await ctx.elicit(question, SpendApproval)
        except Exception:  # declared the capability but could not ask after all (some clients do)
            logger.info("the client declared elicitation but the spend question failed", exc_info=True)
            return Assessment("cannot_ask", reason, shared=state.settings.oauth)
        if isinstance(outcome, AcceptedElicitation):
            return outcome.data
        return Assessment("declined" if isinstance(outcome, DeclinedElicitation) else "dismissed")
    return Assessment("no_answer")


Approval = ElicitationResult[SpendApproval]


def approval_of(outcome: Approval) -> str | None:
    """How the spend was allowed ("within the limits", "approved by the user"); ``SpendRefused`` if not."""
    if isinstance(outcome, AcceptedElicitation):
        data = outcome.data
        if isinstance(data, SpendApproval):
            if data.approve:
                return "approved by the user"
            raise SpendRefused("The user declined the spend. Nothing was submitted and nothing was spent.")
        if isinstance(data, Assessment):
            if data.verdict == "no_answer":
                raise SpendRefused(
                    "The user did not answer the spend question in time (FLUX_MCP_APPROVAL_TIMEOUT_SECONDS). "
                    "Nothing was submitted and nothing was spent."
                )
            if data.verdict in ("declined", "dismissed"):
                raise SpendRefused(
                    f"The user {data.verdict} the spend. Nothing was submitted and nothing was spent."
                )
            if data.verdict == "over_call_limit":
                raise SpendRefused(
                    f"Not submitted, nothing was spent: {data.reason}. Raise max_cost_usd or drop it."
                )
            if data.verdict == "cannot_ask" and data.shared:
                raise SpendRefused(
                    f"Not submitted, nothing was spent: {data.reason}, and this MCP client cannot ask the user to "
                    "approve it. For the user (the assistant cannot approve spending): this server's operator "
                    "sets the limits (FLUX_MCP_USER_BUDGETS can give you your own); ask them, or use a client "
                    "that supports elicitation, which asks you each time."
                )
            if data.verdict == "cannot_ask":
                raise SpendRefused(
                    f"Not submitted, nothing was spent: {data.reason}, and this MCP client cannot ask the user to "
                    "approve it. For the user (the assistant cannot approve spending): raise that setting in "
                    "the server's environment (the 'env' of its entry in the MCP client's configuration; "
                    "'off' removes a limit), then restart the server, or use a client that supports "
                    "elicitation, which asks you each time."
                )
        return None  # within the limits, or not priced here (the tool refuses it itself)
    raise SpendRefused(
        "The user did not approve the spend (the question was declined or dismissed). Nothing was "
        "submitted and nothing was spent."
    )
