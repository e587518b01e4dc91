"""The official ``fal-client`` against the emulator: proof it speaks fal's protocol, not only ours.

The client is pointed at the emulator the way fal's own tests redirect it, by patching the module's
URL globals (section 1.4 of the protocol notes).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client as fal_module
import httpx
import pytest
from PIL import Image

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.models import ULTRA_PIXELS

pytestmark = pytest.mark.anyio

ULTRA = "fal-ai/flux-pro/v1.1-ultra"
SCHNELL = "fal-ai/flux/schnell"


@pytest.fixture
def fal(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """The emulator, with fal_client's hosts pointed at it."""
    monkeypatch.setattr(fal_module, "QUEUE_URL_FORMAT", f"{emulator.url}/")
    monkeypatch.setattr(fal_module, "RUN_URL_FORMAT", f"{emulator.url}/run/")
    monkeypatch.setattr(fal_module, "REST_URL", emulator.url)
    monkeypatch.setattr(fal_module, "CDN_URL", emulator.url)
    monkeypatch.setattr(fal_module, "BASE_DELAY", 0.01)  # sync retry back-off, to keep retries quick
    emulator.config.job_seconds = 0.05
    yield emulator


def fetch(url: str) -> bytes:
    response = httpx.get(url)
    response.raise_for_status()
    return response.content


async def test_async_subscribe_with_logs_and_queue_updates(fal: Emulator) -> None:
    fal.config.job_seconds = 0.3  # long enough for the 0.1 s polls to see it in progress
    client = fal_client.AsyncClient(key=fal.key)
    updates: list[Any] = []
    enqueued: list[str] = []
    result = await client.subscribe(
        ULTRA,
        {"prompt": "a lighthouse at dusk", "aspect_ratio": "21:9", "seed": 5},
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=updates.append,
    )
    assert (result["images"][0]["width"], result["images"][0]["height"]) == ULTRA_PIXELS["21:9"]
    assert result["seed"] == 5
    assert isinstance(updates[-1], fal_client.Completed)
    assert updates[-1].metrics["inference_time"] > 0
    assert any(isinstance(update, fal_client.InProgress) and update.logs for update in updates)
    assert fal.job(enqueued[0]).outcome == "ok"
    with Image.open(io.BytesIO(fetch(result["images"][0]["url"]))) as image:
        assert image.size == ULTRA_PIXELS["21:9"]


def test_sync_submit_status_and_result(fal: Emulator) -> None:
    client = fal_client.SyncClient(key=fal.key)
    handle = client.submit(SCHNELL, {"prompt": "x"}, hint="runner-7", priority="low", start_timeout=30)
    status = client.status(SCHNELL, handle.request_id, with_logs=True)  # rebuilt owner/alias URL
    assert isinstance(status, fal_client.Queued | fal_client.InProgress | fal_client.Completed)
    result = handle.get()
    assert result == client.result(SCHNELL, handle.request_id)
    completed = handle.status(with_logs=False)
    assert isinstance(completed, fal_client.Completed) and completed.logs is None and completed.error is None
    info = fal.job(handle.request_id)
    assert (info.runner_hint, info.priority, info.start_timeout) == ("runner-7", "low", 30.0)


async def test_cancel_a_queued_request(fal: Emulator) -> None:
    fal.config.max_concurrent = 0
    client = fal_client.AsyncClient(key=fal.key)
    handle = await client.submit(SCHNELL, {"prompt": "x"})
    assert isinstance(await handle.status(), fal_client.Queued)
    await handle.cancel()
    status = await handle.status()
    assert isinstance(status, fal_client.Completed) and status.error_type == "client_cancelled"
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        await handle.get()
    assert raised.value.status_code == 499 and raised.value.error_type == "client_cancelled"
    with pytest.raises(fal_client.client.FalClientHTTPError) as again:
        await client.cancel(SCHNELL, handle.request_id)  # already finished: the "status" style's 400
    assert again.value.status_code == 400


async def test_run_sync_and_async(fal: Emulator) -> None:
    sync_result = fal_client.SyncClient(key=fal.key).run(SCHNELL, {"prompt": "x", "image_size": "square"})
    async_result = await fal_client.AsyncClient(key=fal.key).run(
        SCHNELL, {"prompt": "x", "image_size": "square"}
    )
    for result in (sync_result, async_result):
        assert (result["images"][0]["width"], result["images"][0]["height"]) == (512, 512)
    assert fal.counters["run"] == 2


async def test_validation_and_content_policy_surface_as_422(fal: Emulator) -> None:
    client = fal_client.AsyncClient(key=fal.key)
    with pytest.raises(fal_client.client.FalClientHTTPError) as invalid:
        await client.subscribe(ULTRA, {"prompt": "x", "safety_tolerance": 2})
    assert invalid.value.status_code == 422
    assert invalid.value.message[0]["loc"] == ["body", "safety_tolerance"]
    with pytest.raises(fal_client.client.FalClientHTTPError) as flagged:
        await client.subscribe(ULTRA, {"prompt": "forbidden"})
    assert flagged.value.message[0]["type"] == "content_policy_violation"


async def test_client_retries_ingress_errors_but_not_fal_errors(fal: Emulator) -> None:
    fal.config.job_seconds = 0
    client = fal_client.AsyncClient(key=fal.key)
    fal.inject("submit", "502_nginx")
    fal.inject("submit", "429")
    handle = await client.submit(SCHNELL, {"prompt": "x"})
    assert fal.counters["submit"] == 3
    fal.inject("result", "503_fal")
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        await handle.get()
    assert raised.value.status_code == 503 and fal.counters["result"] == 1


def test_sync_upload_and_upload_file(fal: Emulator, tmp_path: Path) -> None:
    client = fal_client.SyncClient(key=fal.key)
    url = client.upload(b"plain bytes", "text/plain", file_name="a.txt")
    assert url.startswith(f"{fal.url}/files/") and fetch(url) == b"plain bytes"
    picture = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), "red").save(picture)
    file_url = client.upload_file(picture)
    assert file_url.endswith("_photo.png") and fetch(file_url) == picture.read_bytes()
    assert fal.counters["token"] == 1 and fal.counters["upload"] == 2


async def test_async_multipart_upload(fal: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_module, "MULTIPART_THRESHOLD", 1000)
    monkeypatch.setattr(fal_module, "MULTIPART_CHUNK_SIZE", 300)
    data = bytes(range(256)) * 10
    url = await fal_client.AsyncClient(key=fal.key).upload(
        data, "application/octet-stream", file_name="blob.bin"
    )
    assert fetch(url) == data
    assert fal.counters["multipart_part"] == 9 and fal.counters["multipart_complete"] == 1


def test_upload_falls_back_to_the_signed_url_route(fal: Emulator) -> None:
    fal.inject("upload", "500")  # the CDN upload fails: the client falls back to storage/upload/initiate
    url = fal_client.SyncClient(key=fal.key).upload(b"fallback", "text/plain", file_name="f.txt")
    assert fetch(url) == b"fallback"
    assert (fal.counters["initiate"], fal.counters["signed_put"]) == (1, 1)


async def test_flux_2_pro_through_fal_client(fal: Emulator) -> None:
    result = await fal_client.AsyncClient(key=fal.key).subscribe(
        "fal-ai/flux-2-pro", {"prompt": "a knight's visor", "image_size": "square_hd", "seed": 3}
    )

    assert set(result) == {"images", "seed"}  # FLUX.2 [pro] answers no timings, flags or prompt
    assert result["seed"] == 3
    image = Image.open(io.BytesIO(fetch(result["images"][0]["url"])))
    assert image.size == (1024, 1024)


async def test_a_multi_image_edit_through_fal_client(fal: Emulator) -> None:
    client = fal_client.AsyncClient(key=fal.key)
    urls = []
    for colour in ((220, 20, 20), (20, 20, 220)):
        buffer = io.BytesIO()
        Image.new("RGB", (400, 400), colour).save(buffer, "PNG")
        urls.append(await client.upload(buffer.getvalue(), "image/png", file_name="input.png"))

    result = await client.subscribe(
        "fal-ai/flux-pro/kontext/multi",
        {"prompt": "put the duck on the t-shirt", "image_urls": urls, "aspect_ratio": "16:9"},
    )

    image = Image.open(io.BytesIO(fetch(result["images"][0]["url"]))).convert("RGB")
    width, height = image.size
    assert abs(width / height - 16 / 9) < 0.05
    left, right = image.getpixel((width // 4, height // 3)), image.getpixel((3 * width // 4, height // 3))
    assert left[0] > left[2] and right[2] > right[0]  # the red input tiled left, the blue one right
