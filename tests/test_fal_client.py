"""The fal client against the emulator over real HTTP: happy paths, every error class, retries, never
paying twice, uploads, and the key never leaving for a foreign host."""

from __future__ import annotations

import http.server
import io
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.fal import (
    AccountLockedError,
    AuthenticationError,
    ContentPolicyError,
    FalClient,
    FalTimeoutError,
    ForeignURLError,
    JobFailedError,
    MissingCredentialsError,
    NotFoundError,
    QueueHandle,
    RateLimitedError,
    RetryPolicy,
    SubmissionStateUnknownError,
    UpstreamUnavailableError,
    ValidationError,
)
from fal_flux_mcp.models import ULTRA_PIXELS
from fal_flux_mcp.registry import MODELS
from tests.samples import image_bytes
from tests.serving import serve_handler

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=2.0)


@pytest.fixture
async def fal(emulator: Emulator) -> AsyncIterator[FalClient]:
    async with FalClient(emulator.key, base_url=emulator.url, retry=FAST_RETRY, poll_interval=0.02) as client:
        yield client


def minimal_input(endpoint_id: str, image_url: str) -> dict[str, object]:
    model = MODELS[endpoint_id]
    arguments: dict[str, object] = {"prompt": "a red fox in snow", "seed": 7}
    required = model.required_inputs
    if "image_url" in required:
        arguments["image_url"] = image_url
    if "image_urls" in required:
        arguments["image_urls"] = [image_url]
    if "mask_url" in required:
        arguments["mask_url"] = image_url  # the image itself: white enough, and of its size
    if "finetune_id" in required:
        arguments |= {"finetune_id": "my-finetune", "finetune_strength": 1.0}
    if "output_format" in model.parameters:
        arguments["output_format"] = "jpeg"  # FLUX.2 [flash] renders PNG by default
    return arguments


class Capture(http.server.BaseHTTPRequestHandler):
    """A foreign host that records what reaches it."""

    seen: list[dict[str, str]]

    def _record(self) -> None:
        self.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        body = b'{"status": "COMPLETED", "logs": null}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = _record

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def foreign() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    with serve_handler(type("Handler", (Capture,), {"seen": seen})) as origin:
        yield origin, seen


@pytest.fixture
def unused_tcp_port_url() -> str:
    """An origin nothing listens on: the port was bound and released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------ happy paths


@pytest.mark.parametrize("endpoint_id", list(MODELS))
async def test_every_model_generates_real_images(
    emulator: Emulator, fal: FalClient, endpoint_id: str
) -> None:
    source = await fal.upload_bytes(image_bytes(size=(64, 48)), content_type="image/png", file_name="in.png")
    handle = await fal.submit(endpoint_id, minimal_input(endpoint_id, source))
    output = await fal.wait(handle)
    assert len(output.images) == 1 and output.seed == 7
    data = await fal.download(output.images[0].url)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert (image.width, image.height) == (output.images[0].width, output.images[0].height)


async def test_ultra_renders_its_4mp_size_for_each_aspect_ratio(fal: FalClient) -> None:
    handle = await fal.submit(
        "fal-ai/flux-pro/v1.1-ultra", {"prompt": "x", "aspect_ratio": "9:21", "num_images": 2}
    )
    output = await fal.wait(handle)
    assert [(i.width, i.height) for i in output.images] == [ULTRA_PIXELS["9:21"]] * 2


async def test_a_job_costs_three_requests_submit_stream_result(emulator: Emulator, fal: FalClient) -> None:
    emulator.config.job_seconds = 0.3
    emulator.reset_counters()
    handle = await fal.submit("fal-ai/flux/schnell", {"prompt": "a cat"})
    await fal.wait(handle, logs=True)
    counts = {k: v for k, v in emulator.counters.items() if v}
    assert counts == {"submit": 1, "stream": 1, "result": 1}


async def test_status_urls_are_the_ones_fal_returned_in_owner_alias_form(fal: FalClient) -> None:
    handle = await fal.submit("fal-ai/flux-pro/v1.1-ultra", {"prompt": "x"})
    assert "/fal-ai/flux-pro/requests/" in handle.status_url
    assert "v1.1-ultra/requests" not in handle.status_url


async def test_status_reports_queue_positions_then_progress_with_logs(
    emulator: Emulator, fal: FalClient
) -> None:
    emulator.config.queue_depth = 2
    emulator.config.queue_step_seconds = 0.1
    emulator.config.job_seconds = 0.3
    handle = await fal.submit("fal-ai/flux/dev", {"prompt": "x"})
    seen = [s async for s in fal.stream_status(handle, logs=True)]
    states = [s.status for s in seen]
    assert states[0] == "IN_QUEUE" and states[-1] == "COMPLETED" and "IN_PROGRESS" in states
    positions = [s.queue_position for s in seen if s.status == "IN_QUEUE"]
    assert positions == sorted(positions, reverse=True) and positions[0] == 2
    assert any(s.logs for s in seen if s.status != "IN_QUEUE")


async def test_polling_is_the_fallback_when_the_stream_is_unavailable(
    emulator: Emulator, fal: FalClient
) -> None:
    emulator.config.job_seconds = 0.2
    emulator.inject("stream", "502_nginx", count=10)
    handle = await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    output = await fal.wait(handle)
    assert output.images
    assert emulator.counters["status"] >= 1


async def test_a_broken_stream_is_reopened_before_falling_back_to_polling(
    emulator: Emulator, fal: FalClient
) -> None:
    emulator.config.job_seconds = 0.2
    emulator.inject("stream", "drop_before", count=1)
    handle = await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert (await fal.wait(handle)).images
    assert emulator.counters["stream"] == 2 and emulator.counters["status"] == 0


async def test_result_while_running_is_none_not_an_error(emulator: Emulator, fal: FalClient) -> None:
    emulator.config.job_seconds = 5
    handle = await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert await fal.result(handle) is None
    await fal.cancel(handle)


async def test_a_handle_rebuilt_from_the_request_id_finds_the_job(fal: FalClient) -> None:
    submitted = await fal.submit("fal-ai/flux-pro/v1.1-ultra", {"prompt": "x"})
    handle, status = await fal.resolve_handle("fal-ai/flux-pro/v1.1-ultra", submitted.request_id)
    assert status.request_id == submitted.request_id
    assert (await fal.wait(handle)).images


@pytest.mark.parametrize("routes", ["app", "full_path"])
async def test_a_rebuilt_handle_finds_jobs_of_apps_that_route_only_one_url_form(
    emulator: Emulator, fal: FalClient, routes: str
) -> None:
    emulator.config.request_routes = routes
    submitted = await fal.submit("fal-ai/flux-pro/v1.1-ultra", {"prompt": "x"})
    assert ("/v1.1-ultra/requests/" in submitted.status_url) == (routes == "full_path")
    handle, status = await fal.resolve_handle("fal-ai/flux-pro/v1.1-ultra", submitted.request_id)
    assert handle.status_url == submitted.status_url and status.request_id == submitted.request_id
    assert (await fal.wait(handle)).images


async def test_webhook_url_goes_to_fal_webhook(emulator: Emulator, fal: FalClient, foreign) -> None:
    url, seen = foreign
    emulator.config.job_seconds = 0.05
    handle = await fal.submit("fal-ai/flux/schnell", {"prompt": "x"}, webhook_url=f"{url}/hook")
    await fal.wait(handle)
    for _ in range(200):
        if seen:
            break
        await anyio.sleep(0.01)
    assert seen and seen[0]["path"] == "/hook"
    assert emulator.key not in str(seen)


# --------------------------------------------------------------------------------------- input checks


async def test_invalid_input_is_refused_before_anything_is_sent(emulator: Emulator, fal: FalClient) -> None:
    emulator.reset_counters()
    with pytest.raises(ValidationError) as info:
        await fal.submit("fal-ai/flux-pro/v1.1", {"prompt": "x", "num_images": 9, "safety_tolerance": 2})
    assert "num_images" in str(info.value) and "safety_tolerance" in str(info.value)
    with pytest.raises(ValidationError, match="image_size"):
        await fal.submit("fal-ai/flux-pro/v1.1-ultra", {"prompt": "x", "image_size": "square"})
    assert sum(emulator.counters.values()) == 0


async def test_fal_side_validation_error_surfaces_on_the_result_with_field_errors(
    emulator: Emulator, fal: FalClient
) -> None:
    # fal accepts an invalid body at submit and fails it at the result call; send one past our checks.
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{emulator.url}/fal-ai/flux/dev",
            json={"num_images": 9},
            headers={"Authorization": f"Key {emulator.key}"},
        )
    raw = answer.json()
    handle = QueueHandle(
        endpoint_id="fal-ai/flux/dev",
        **{k: raw[k] for k in ("request_id", "status_url", "response_url", "cancel_url")},
    )
    with pytest.raises(ValidationError) as info:
        await fal.wait(handle)
    fields = {tuple(e["loc"]) for e in info.value.field_errors}
    assert ("body", "prompt") in fields and ("body", "num_images") in fields


async def test_content_policy_and_nsfw(fal: FalClient) -> None:
    with pytest.raises(ContentPolicyError, match="content checker"):
        await fal.wait(await fal.submit("fal-ai/flux/dev", {"prompt": "something forbidden"}))
    output = await fal.wait(await fal.submit("fal-ai/flux/dev", {"prompt": "nsfw scene"}))
    assert output.has_nsfw_concepts == [True]
    with Image.open(io.BytesIO(await fal.download(output.images[0].url))) as image:
        assert image.convert("L").getextrema() == (0, 0)


async def test_a_job_that_failed_on_fal_raises_job_failed(fal: FalClient) -> None:
    with pytest.raises(JobFailedError):
        await fal.wait(await fal.submit("fal-ai/flux/dev", {"prompt": "runner-crash please"}))


async def test_start_timeout_is_a_timeout_error(emulator: Emulator, fal: FalClient) -> None:
    emulator.config.queue_depth = 10
    emulator.config.queue_step_seconds = 1
    handle = await fal.submit("fal-ai/flux/dev", {"prompt": "x"}, start_timeout=1.5)
    with pytest.raises(FalTimeoutError, match="start"):
        await fal.wait(handle)


# ------------------------------------------------------------------------------------------- auth


async def test_missing_key_is_reported_at_the_first_call_not_before(emulator: Emulator) -> None:
    async with FalClient(None, base_url=emulator.url) as client:
        with pytest.raises(MissingCredentialsError, match="FAL_KEY"):
            await client.submit("fal-ai/flux/dev", {"prompt": "x"})
    assert emulator.counters["submit"] == 0


async def test_wrong_key_and_locked_account(emulator: Emulator) -> None:
    async with FalClient("wrong:key", base_url=emulator.url, retry=FAST_RETRY) as client:
        with pytest.raises(AuthenticationError, match="FAL_KEY"):
            await client.submit("fal-ai/flux/dev", {"prompt": "x"})
    emulator.config.locked = True
    async with FalClient(emulator.key, base_url=emulator.url, retry=FAST_RETRY) as client:
        with pytest.raises(AccountLockedError, match="top up"):
            await client.submit("fal-ai/flux/dev", {"prompt": "x"})
    assert emulator.counters["submit"] == 2


async def test_unknown_request_id_is_not_found(fal: FalClient) -> None:
    with pytest.raises(NotFoundError):
        await fal.status(fal.handle("fal-ai/flux/dev", "00000000-0000-4000-8000-000000000000"))


# ------------------------------------------------------------------------------------- retries, money


async def test_429_is_retried_honouring_retry_after(emulator: Emulator, fal: FalClient) -> None:
    emulator.inject("submit", "429", count=2, retry_after=0.2)
    started = time.monotonic()
    handle = await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert time.monotonic() - started >= 0.4
    assert emulator.counters["submit"] == 3
    assert emulator.job(handle.request_id) is not None


async def test_429_gives_up_after_the_attempt_limit(emulator: Emulator, fal: FalClient) -> None:
    emulator.inject("submit", "429", count=10)
    with pytest.raises(RateLimitedError, match="4 attempts"):
        await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert emulator.counters["submit"] == FAST_RETRY.max_attempts


async def test_a_retry_after_longer_than_allowed_is_reported_not_waited(
    emulator: Emulator, fal: FalClient
) -> None:
    emulator.inject("submit", "429", count=1, retry_after=60)
    with pytest.raises(RateLimitedError) as info:
        await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert info.value.retry_after == pytest.approx(60, abs=1)
    assert emulator.counters["submit"] == 1


async def test_ingress_502_is_retried_even_for_submit(emulator: Emulator, fal: FalClient) -> None:
    emulator.inject("submit", "502_nginx", count=2)
    handle = await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert emulator.counters["submit"] == 3 and handle.request_id


@pytest.mark.parametrize("fault", ["503_fal", "500"])
async def test_errors_from_fal_itself_are_not_retried_on_submit(
    emulator: Emulator, fal: FalClient, fault: str
) -> None:
    emulator.inject("submit", fault, count=5)
    with pytest.raises(SubmissionStateUnknownError, match="may have queued the job"):
        await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert emulator.counters["submit"] == 1


async def test_reads_are_retried_on_transient_failures(emulator: Emulator, fal: FalClient) -> None:
    emulator.config.job_seconds = 0.05
    handle = await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    emulator.inject("status", "drop", count=1)
    emulator.inject("result", "502_nginx", count=2)
    await fal.status(handle)
    assert (await fal.wait(handle)).images


async def test_read_timeout_on_submit_is_state_unknown_and_never_resent(emulator: Emulator) -> None:
    emulator.inject("submit", "slow", count=1, delay=1.0)
    async with FalClient(emulator.key, base_url=emulator.url, retry=FAST_RETRY, http=None) as client:
        client.http.timeout = httpx.Timeout(0.3, connect=2.0)
        with pytest.raises(SubmissionStateUnknownError, match="not retried"):
            await client.submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert emulator.counters["submit"] == 1
    assert len(emulator.jobs()) == 1  # the job exists on fal: exactly one, never two


async def test_dropped_connection_after_submit_is_state_unknown(emulator: Emulator, fal: FalClient) -> None:
    emulator.inject("submit", "drop", count=1)
    with pytest.raises(SubmissionStateUnknownError):
        await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    assert emulator.counters["submit"] == 1


async def test_connect_failure_is_retried_then_reported(unused_tcp_port_url: str) -> None:
    async with FalClient("id:secret", base_url=unused_tcp_port_url, retry=FAST_RETRY) as client:
        with pytest.raises(UpstreamUnavailableError, match="Could not reach fal"):
            await client.submit("fal-ai/flux/schnell", {"prompt": "x"})


# ------------------------------------------------------------------------------------------ the key


async def test_the_key_is_never_sent_to_a_foreign_status_url(fal: FalClient, foreign) -> None:
    url, seen = foreign
    handle = QueueHandle(
        endpoint_id="fal-ai/flux/dev",
        request_id="r",
        status_url=f"{url}/status",
        response_url=f"{url}/result",
        cancel_url=f"{url}/cancel",
    )
    with pytest.raises(ForeignURLError, match="not a fal host"):
        await fal.status(handle)
    with pytest.raises(ForeignURLError):
        await fal.result(handle)
    with pytest.raises(ForeignURLError):
        await fal.cancel(handle)
    assert seen == []


async def test_downloads_carry_no_key(emulator: Emulator, fal: FalClient, foreign) -> None:
    url, seen = foreign
    await fal.download(f"{url}/files/x.jpg")
    assert seen and "authorization" not in seen[0]


async def test_real_hosts_only_get_the_key_over_https() -> None:
    client = FalClient("id:secret")
    try:
        assert client.hosts.may_carry_key("https://queue.fal.run/fal-ai/flux/requests/1/status")
        assert not client.hosts.may_carry_key("http://queue.fal.run/fal-ai/flux/requests/1/status")
        assert not client.hosts.may_carry_key("https://queue.fal.run.evil.com/x")
        assert not client.hosts.may_carry_key("https://v3.fal.media/files/x")
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------------------- cancel


async def test_cancel_a_queued_job_means_it_never_runs(emulator: Emulator, fal: FalClient) -> None:
    emulator.config.queue_depth = 20
    handle = await fal.submit("fal-ai/flux/dev", {"prompt": "x"})
    answer = await fal.cancel(handle)
    assert answer.accepted
    with pytest.raises(JobFailedError, match="cancel"):
        await fal.wait(handle)


@pytest.mark.parametrize("style", ["status", "openapi"])
async def test_cancel_after_completion_says_already_finished(
    emulator: Emulator, fal: FalClient, style: str
) -> None:
    emulator.config.cancel_style = style
    emulator.config.job_seconds = 0.05
    handle = await fal.submit("fal-ai/flux/schnell", {"prompt": "x"})
    await fal.wait(handle)
    assert not (await fal.cancel(handle)).accepted


# ------------------------------------------------------------------------------------------- upload


async def test_single_upload_round_trips(tmp_path: Path, emulator: Emulator, fal: FalClient) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(image_bytes(size=(300, 200)))
    url = await fal.upload_file(path)
    assert url.startswith(emulator.url)
    assert await fal.download(url) == path.read_bytes()
    assert emulator.counters["upload"] == 1


async def test_multipart_upload_above_the_threshold(tmp_path: Path, emulator: Emulator) -> None:
    path = tmp_path / "big.bin"
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB
    path.write_bytes(payload)
    async with FalClient(
        emulator.key, base_url=emulator.url, multipart_threshold=1024 * 1024, part_size=512 * 1024
    ) as client:
        url = await client.upload_file(path, content_type="application/octet-stream")
        assert await client.download(url) == payload
    assert emulator.counters["multipart_part"] == 6
    assert emulator.counters["multipart_complete"] == 1


async def test_upload_falls_back_to_initiate_and_put(
    tmp_path: Path, emulator: Emulator, fal: FalClient
) -> None:
    emulator.inject("upload", "500", count=1)
    path = tmp_path / "p.png"
    path.write_bytes(image_bytes(size=(10, 10)))
    url = await fal.upload_file(path)
    assert await fal.download(url) == path.read_bytes()
    assert emulator.counters["initiate"] == 1 and emulator.counters["signed_put"] == 1
