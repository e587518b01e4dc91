"""A plain MCP client for fal-flux-mcp over stdio: submit a job, follow it, fetch the image as a resource.

What it shows, with nothing but the MCP Python SDK (``mcp.Client``):

* launching ``python -m fal_flux_mcp serve`` as a stdio subprocess with an explicit environment (the SDK
  passes the child only HOME, PATH and a few others, plus what you give it);
* ``list_tools``, then ``submit_job`` (returns at once with a ``job_id``), then ``check_status`` with
  ``wait_seconds`` in a loop, printing the server's progress notifications as they arrive;
* reading the ``flux://images/{job_id}/0`` resource and writing its bytes to a file: this is how a
  client that does not share the server's file system gets the full-resolution image;
* handling results properly: ``is_error`` results (a request the server refused, with a message
  saying what to change), failed or cancelled jobs, and ``cancel_job`` when our deadline passes.

Run it (from the repository root, in the project's virtualenv)::

    python examples/stdio_client.py                       # offline: starts a local fal emulator itself
    python examples/stdio_client.py --prompt "a red fox in snow" --aspect-ratio 16:9
    python examples/stdio_client.py --fal-url http://127.0.0.1:8765   # an emulator you started with
                                                                      # `fal-flux-mcp emulator --port 8765`
    FAL_KEY=<key_id>:<key_secret> python examples/stdio_client.py --real    # real fal.ai: costs money

Images land in ``./fal-flux-mcp-output`` (``--output-dir``): the file the server saved, and the copy this
client read through the resource (``--out``). With ``--webhook-url``, fal (or the emulator) also POSTs
the result there when the job finishes: see ``examples/webhook_receiver.py``.

Exit status: 0 when the image was written, 1 when the job or a call failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, MCPError, StdioServerParameters
from mcp.types import BlobResourceContents, CallToolResult, TextContent

TERMINAL = {"completed", "failed", "cancelled"}
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}


class ExampleError(Exception):
    """A failure to report to the user (the message says what went wrong), exit status 1."""


def tool_text(result: CallToolResult) -> str:
    """The human-readable text of a tool result (its text blocks)."""
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def checked(result: CallToolResult, tool: str) -> dict[str, Any]:
    """The structured result of a successful call; an ``is_error`` result becomes an ``ExampleError``.

    A tool error is not an exception on the client side: the call succeeded, and the server answered
    that it could not do it and why. Its text is written for the user (or the model) to act on.
    """
    if result.is_error:
        raise ExampleError(f"{tool} refused: {tool_text(result) or 'no message'}")
    if result.structured_content is None:
        raise ExampleError(f"{tool} returned no structured content: {tool_text(result)}")
    return result.structured_content


ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]


def print_progress(started: float) -> ProgressCallback:
    """A ``progress_callback`` that prints the server's progress messages with the elapsed time."""

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        print(f"  [{time.monotonic() - started:6.2f}s] {message or progress}", flush=True)

    return on_progress


async def follow_job(
    client: Client, arguments: dict[str, Any], *, wait_seconds: float, timeout: float
) -> tuple[dict[str, Any], bytes]:
    """Submit a job and follow it to the end; returns the completed job and its first image's bytes."""
    started = time.monotonic()
    on_progress = print_progress(started)
    print(f"submit_job({', '.join(f'{k}={v!r}' for k, v in arguments.items())})")
    job = checked(await client.call_tool("submit_job", arguments), "submit_job")
    job_id = job["job_id"]
    print(f"  job {job_id}: {job['status']} (estimated cost ${job.get('cost_usd')})")

    deadline = started + timeout
    while job["status"] not in TERMINAL:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            cancel = checked(await client.call_tool("cancel_job", {"job_id": job_id}), "cancel_job")
            raise ExampleError(f"gave up after {timeout:g}s; cancel_job: {cancel['message']}")
        job = checked(
            await client.call_tool(
                "check_status",
                {"job_id": job_id, "wait_seconds": min(wait_seconds, remaining)},
                progress_callback=on_progress,
            ),
            "check_status",
        )
        position = job.get("queue_position")
        print(f"  status: {job['status']}" + (f", queue position {position}" if position is not None else ""))

    if job["status"] != "completed":
        # check_status reports a failed job as a status, not as a tool error: the call itself worked.
        raise ExampleError(f"job {job_id} {job['status']}: {job.get('error') or job['message']}")
    image = job["images"][0]
    print(
        f"completed in {time.monotonic() - started:.2f}s: {image['width']}x{image['height']}, seed {job['seed']}"
    )
    print(f"  fal URL:           {image['url']}")
    print(f"  saved by server:   {image['path']}")

    try:
        resource = await client.read_resource(image["resource_uri"])
    except MCPError as exc:
        raise ExampleError(f"could not read {image['resource_uri']}: {exc}") from None
    blobs = [c for c in resource.contents if isinstance(c, BlobResourceContents)]
    if not blobs:
        raise ExampleError(f"{image['resource_uri']} returned no binary contents")
    data = base64.b64decode(blobs[0].blob)
    print(f"  read {image['resource_uri']} ({len(data):,} bytes)")
    return job, data


async def run(
    env: dict[str, str],
    *,
    arguments: dict[str, Any],
    output_dir: Path,
    out: Path | None,
    wait_seconds: float,
    timeout: float,
) -> Path:
    """Start the server, drive it through one job and write the image; returns the file written."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "fal_flux_mcp", "serve"], env=env)
    async with Client(params) as client:
        tools = await client.list_tools()
        print(f"connected to {client.server_info.name}: tools {', '.join(t.name for t in tools.tools)}")
        try:
            job, data = await follow_job(client, arguments, wait_seconds=wait_seconds, timeout=timeout)
        except ExampleError as exc:
            # Raised out of the ``async with`` it would reach us wrapped in the SDK's task-group
            # ExceptionGroup: leave the session cleanly first.
            failure = exc
        else:
            failure = None
    if failure is not None:
        raise failure
    image = job["images"][0]
    target = (
        out or output_dir / f"{job['job_id']}-via-resource{EXTENSIONS.get(image['content_type'], '.bin')}"
    )
    await anyio.Path(target.parent).mkdir(parents=True, exist_ok=True)
    await anyio.Path(target).write_bytes(data)
    print(f"  written to:        {target.resolve()}")
    return target


@contextmanager
def fal_backend(args: argparse.Namespace) -> Iterator[dict[str, str]]:
    """The fal part of the server's environment: real fal, a given emulator, or one started here."""
    if args.real:
        key = os.environ.get("FAL_KEY")
        if not key:
            raise SystemExit("--real needs FAL_KEY=<key_id>:<key_secret> in the environment")
        print("using real fal.ai (this costs money)")
        yield {"FAL_KEY": key}  # state (the job journal) in the server's default directory
        return
    with tempfile.TemporaryDirectory(prefix="fal-flux-mcp-example-") as state_dir:
        # Emulated job ids mean nothing once the emulator is gone: keep the journal in a temporary dir.
        if args.fal_url:
            from fal_flux_mcp.emulator import DEFAULT_KEY

            print(f"using the fal emulator at {args.fal_url}")  # with its key, never your real one
            yield {"FAL_KEY": DEFAULT_KEY, "FLUX_MCP_FAL_URL": args.fal_url, "FLUX_MCP_STATE_DIR": state_dir}
            return
        from fal_flux_mcp.emulator import Emulator, EmulatorConfig

        if os.environ.get("FAL_KEY"):
            print("FAL_KEY is set but --real was not given: using a local emulator")
        with Emulator(EmulatorConfig(job_seconds=2.0)) as emulator:
            print(f"started a fal emulator at {emulator.url} (offline, no account)")
            yield {"FAL_KEY": emulator.key, "FLUX_MCP_FAL_URL": emulator.url, "FLUX_MCP_STATE_DIR": state_dir}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    parser.add_argument(
        "--model", default="fal-ai/flux/schnell", help="fal endpoint id (default: %(default)s)"
    )
    parser.add_argument("--aspect-ratio", help="e.g. 16:9 (default: the model's)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--webhook-url", help="also have fal POST the result here when the job finishes")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("fal-flux-mcp-output"), help="default: %(default)s"
    )
    parser.add_argument("--out", type=Path, help="file for the image read through the resource")
    parser.add_argument("--wait-seconds", type=float, default=10.0, help="per check_status call (0-45)")
    parser.add_argument("--timeout", type=float, default=300.0, help="cancel the job after this long")
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--real", action="store_true", help="use real fal.ai with FAL_KEY (costs money)")
    backend.add_argument("--fal-url", help="use a running fal emulator, e.g. http://127.0.0.1:8765")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    arguments: dict[str, Any] = {"prompt": args.prompt, "model": args.model}
    optional = {"aspect_ratio": args.aspect_ratio, "seed": args.seed, "webhook_url": args.webhook_url}
    arguments.update({name: value for name, value in optional.items() if value is not None})
    output_dir = args.output_dir.expanduser().resolve()
    with fal_backend(args) as fal_env:
        env = {
            **fal_env,
            "FLUX_MCP_OUTPUT_DIR": str(output_dir),
            "FLUX_MCP_LOG_LEVEL": "WARNING",  # the server logs to stderr; stdout is the protocol
        }
        try:
            anyio.run(
                functools.partial(
                    run,
                    env,
                    arguments=arguments,
                    output_dir=output_dir,
                    out=args.out,
                    wait_seconds=args.wait_seconds,
                    timeout=args.timeout,
                )
            )
        except ExampleError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
