"""The emulator's knobs: every behaviour a test may want to change, in one mutable object.

The object is read live by the running server, so a test can change a knob between two calls
(``emu.config.job_seconds = 0.05``). Values that shape a job (its duration, its phantom queue) are
read when the job is submitted; the rest apply to the next request that looks at them.
"""

from __future__ import annotations

import argparse
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_KEY = "emulator-key-id:emulator-key-secret"


def _list_prices() -> dict[str, float]:
    """The registry's list prices: what a fresh emulator's pricing API answers."""
    from fal_flux_mcp.registry import MODELS  # here, not at import: ``serve`` reads this module's options

    return {info.endpoint_id: info.price_usd for info in MODELS.values() if info.price_usd is not None}


class EmulatorConfig(BaseModel):
    """Knobs of the fal emulator. Defaults give fal's behaviour, quirks included, with short jobs."""

    model_config = ConfigDict(validate_assignment=True, use_attribute_docstrings=True, extra="forbid")

    # ----------------------------------------------------------------------------------------------
    # Authentication and account

    key: str = DEFAULT_KEY
    """The one fal key accepted, ``<key_id>:<key_secret>``, sent as ``Authorization: Key <key>``."""

    keys: list[str] = Field(default_factory=list)
    """More keys accepted besides ``key``, each of an account of its own (its key id): as on fal, a
    request is found (status, result, cancel, request history) only with a key of the account that
    submitted it."""

    accept_any_key: bool = False
    """Accept any well-formed ``<id>:<secret>`` key, for demos where the caller's key is unknown."""

    locked: bool = False
    """Answer every authenticated call with fal's 403 "User is locked" (an exhausted balance)."""

    lock_reason: str = "Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
    """The reason quoted in the 403 body while ``locked``."""

    user_id: str = "emulator-user"
    """The account id: what signed webhooks carry in ``X-Fal-Webhook-User-Id``."""

    # ----------------------------------------------------------------------------------------------
    # Timing and queueing

    job_seconds: float = Field(default=1.0, ge=0)
    """How long a job stays IN_PROGRESS. Read at submit. Invalid inputs fail at once instead, as
    fal's input validation does."""

    queue_depth: int = Field(default=0, ge=0)
    """Phantom requests ahead of each new submission: it starts IN_QUEUE at this position."""

    queue_step_seconds: float = Field(default=0.5, ge=0)
    """How long each phantom request ahead takes to clear, i.e. seconds per queue position."""

    max_concurrent: int | None = Field(default=None, ge=0)
    """Jobs IN_PROGRESS at once, like fal's per-account concurrency limit (2 to 40 on real
    accounts); the others wait IN_QUEUE with real positions. ``None``: no limit. ``0`` holds every
    job in the queue until raised. A synchronous ``/run`` call over the limit is answered 429,
    as fal checks direct requests when they arrive instead of queueing them."""

    # ----------------------------------------------------------------------------------------------
    # Validation quirks

    validate_at_submit: bool = False
    """fal accepts an invalid body at submit, runs the job to a plain COMPLETED and only the result
    call answers 422. ``True`` rejects the body with the 422 at submit instead."""

    reject_unknown_fields: bool = False
    """Whether fal rejects unknown input fields (422 ``extra_forbid``) or drops them. Not known for
    sure; dropping them is what fal's pydantic apps do by default, hence the default."""

    request_routes: Literal["both", "app", "full_path"] = "both"
    """Which URL forms reach a request of an endpoint with a sub-path (``fal-ai/flux-pro/v1.1-ultra``).
    ``"both"``: ``.../fal-ai/flux-pro/requests/<id>`` and ``.../fal-ai/flux-pro/v1.1-ultra/requests/<id>``.
    ``"app"``: only the owner/alias form; the full path answers 405, as reported for some apps.
    ``"full_path"``: only the full path, and submit answers with URLs in that form; the owner/alias
    form answers 404 "Path /<sub-path> not found", as fal-js issue 214 reports for other apps."""

    # ----------------------------------------------------------------------------------------------
    # Cancellation

    cancel_style: Literal["status", "openapi"] = "status"
    """How cancel answers. ``"status"``: 202 ``{"status": "CANCELLATION_REQUESTED"}``, 400
    ``{"status": "ALREADY_COMPLETED"}`` once finished and 404 ``{"status": "NOT_FOUND"}``, the
    values fal's queue API reference documents. ``"openapi"``: 200 ``{"success": true}`` and 200
    ``{"success": false}`` once finished, the shape of fal's generated per-endpoint OpenAPI."""

    cancel_in_progress_honoured: bool = True
    """Whether a running job stops when cancelled. fal only signals the app, which may finish
    anyway; ``False`` emulates an app that ignores the signal."""

    # ----------------------------------------------------------------------------------------------
    # Platform API

    history_permission: bool = True
    """Whether the key may read the request history (``/v1/models/requests/by-endpoint``); fal keys
    have per-operation permissions, and one without this one gets 403."""

    pricing_permission: bool = True
    """Whether the key may read the pricing (``/v1/models/pricing``); like the history, a separate
    permission of fal keys, refused with 403."""

    prices: dict[str, float] = Field(default_factory=_list_prices)
    """USD unit price per endpoint id that ``/v1/models/pricing`` answers; ids absent here are absent
    from its answer, as fal leaves out ids it does not price. Defaults to the registry's list
    prices, so a test that wants to tell fal's price from the built-in one sets a different value."""

    # ----------------------------------------------------------------------------------------------
    # Outcome triggers (case-insensitive substrings of the prompt; an empty string disables one)

    content_policy_word: str = "forbidden"
    """A prompt containing this completes plainly and its result is fal's 422
    ``content_policy_violation``."""

    nsfw_word: str = "nsfw"
    """A prompt containing this succeeds with black images and ``has_nsfw_concepts: true``, as fal
    does when its safety checker flags an output."""

    runner_failure_word: str = "runner-crash"
    """A prompt containing this completes with ``error_type: runner_disconnected`` and its result is
    a 503, an infrastructure failure."""

    # ----------------------------------------------------------------------------------------------
    # Images

    look: Literal["flat", "photo"] = "flat"
    """How output images are drawn. ``"flat"``: a gradient and solid shapes, cheap to render and to
    decode, for tests. ``"photo"``: the same with a photograph's texture and grain, which JPEG
    compresses (and decoders decode) like a real FLUX output: what a benchmark should use."""

    render_cache: int = Field(default=32, ge=0)
    """How many rendered files the emulator keeps, to answer a repeated prompt and seed without
    drawing it again. Read when the emulator starts. A benchmark that must not measure the emulator's
    drawing raises it to the number of distinct images it asks for (an ultra photo is about 1.2 MB)."""

    # ----------------------------------------------------------------------------------------------
    # Storage

    token_ttl_seconds: float = Field(default=3600.0, gt=0)
    """Lifetime of the CDN upload tokens ``/storage/auth/token`` hands out."""

    # ----------------------------------------------------------------------------------------------
    # Webhooks

    webhook_attempts: int = Field(default=3, ge=1)
    """Delivery attempts per webhook (fal tries up to 10 times over hours; a test wants fewer)."""

    webhook_retry_seconds: float = Field(default=0.1, ge=0)
    """Delay before the second attempt; it doubles for each further one."""

    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long one delivery attempt may take before it counts as failed."""

    sign_webhooks: bool = True
    """Sign deliveries with the emulator's Ed25519 key (public key at ``/.well-known/jwks.json``)."""

    # ----------------------------------------------------------------------------------------------
    # Server

    shutdown_grace_seconds: float = Field(default=0.5, ge=0)
    """How long stopping waits for open responses before cutting them off."""


def _key_argument(value: str) -> str:
    key_id, colon, secret = value.partition(":")
    if not colon or not key_id or not secret or any(char.isspace() for char in value):
        raise argparse.ArgumentTypeError("a fal key is two parts, key_id:key_secret")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's command-line options, shared by ``fal-flux-mcp emulator`` and ``-m fal_flux_mcp.emulator``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port)")
    parser.add_argument(
        "--job-seconds",
        type=float,
        default=EmulatorConfig.model_fields["job_seconds"].default,
        help="how long each job runs, in seconds",
    )
    parser.add_argument(
        "--look",
        choices=("flat", "photo"),
        default=EmulatorConfig.model_fields["look"].default,
        help="how images are drawn: flat shapes (fast), or with a photo's texture and grain (realistic sizes)",
    )
    parser.add_argument(
        "--render-cache",
        type=int,
        default=EmulatorConfig.model_fields["render_cache"].default,
        help="how many rendered files to keep for repeated prompts and seeds",
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--key",
        type=_key_argument,
        default=DEFAULT_KEY,
        help="the one fal key accepted, key_id:key_secret: what your code's FAL_KEY must be",
    )
    keys.add_argument(
        "--any-key",
        action="store_true",
        help="accept any key of the form id:secret, e.g. code that already has its own FAL_KEY",
    )


def config_from_arguments(args: argparse.Namespace) -> EmulatorConfig:
    """The knobs the command line asked for; the rest keep their defaults."""
    return EmulatorConfig(
        key=args.key,
        accept_any_key=args.any_key,
        job_seconds=args.job_seconds,
        look=args.look,
        render_cache=args.render_cache,
    )
