"""The fal emulator's protocol, exercised with plain httpx over real loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from fal_flux_mcp.emulator import Emulator, EmulatorConfig
from fal_flux_mcp.models import ULTRA_PIXELS
from tests.serving import serve_handler

pytestmark = pytest.mark.anyio

SCHNELL = "fal-ai/flux/schnell"
ULTRA = "fal-ai/flux-pro/v1.1-ultra"


# --------------------------------------------------------------------------------------------------
# Helpers


def client(emu: Emulator, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Key {key or emu.key}"}
    return httpx.AsyncClient(base_url=emu.url, headers=headers, timeout=5.0)


async def submit(
    http: httpx.AsyncClient, endpoint: str = SCHNELL, body: Any = None, **kwargs: Any
) -> dict[str, Any]:
    response = await http.post(
        f"/{endpoint}", json={"prompt": "a lighthouse"} if body is None else body, **kwargs
    )
    assert response.status_code == 200, response.text
    return response.json()


async def events(http: httpx.AsyncClient, status_url: str, logs: str = "1") -> list[dict[str, Any]]:
    """Every status event of the SSE stream, which must close after COMPLETED."""
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(5):
        async with http.stream("GET", f"{status_url}/stream", params={"logs": logs}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:]))
    assert seen[-1]["status"] == "COMPLETED"
    return seen


async def finish(http: httpx.AsyncClient, submitted: dict[str, Any]) -> httpx.Response:
    """Wait for the job to complete, then fetch its result."""
    await events(http, submitted["status_url"])
    return await http.get(submitted["response_url"])


async def status(http: httpx.AsyncClient, submitted: dict[str, Any], **params: str) -> dict[str, Any]:
    response = await http.get(submitted["status_url"], params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def image_bytes(url: str) -> bytes:
    async with httpx.AsyncClient() as cdn:  # files need no key
        response = await cdn.get(url)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content


# --------------------------------------------------------------------------------------------------
# Submit, status, stream, result


async def test_submit_answers_like_fal_with_owner_alias_urls(emulator: Emulator) -> None:
    async with client(emulator) as http:
        response = await http.post(f"/{ULTRA}", json={"prompt": "a cat"})
    assert response.status_code == 200
    body = response.json()
    request_id = body["request_id"]
    assert uuid.UUID(request_id).version == 4
    assert response.headers["x-fal-request-id"] == request_id
    base = f"{emulator.url}/fal-ai/flux-pro/requests/{request_id}"
    assert body == {
        "status": "IN_QUEUE",
        "request_id": request_id,
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
        "logs": None,
        "metrics": {},
        "queue_position": 0,
        "gateway_request_id": request_id,
    }


async def test_full_lifecycle_status_stream_and_result(emulator: Emulator) -> None:
    async with client(emulator) as http:
        submitted = await submit(http, ULTRA, {"prompt": "a red fox", "seed": 7, "aspect_ratio": "1:1"})
        seen = await events(http, submitted["status_url"])
        statuses = [event["status"] for event in seen]
        assert statuses[-1] == "COMPLETED" and "IN_PROGRESS" in statuses
        assert statuses.count("COMPLETED") == 1
        for event in seen:
            assert event["request_id"] == submitted["request_id"]
            assert event["status_url"] == submitted["status_url"]
            if event["status"] == "IN_QUEUE":
                assert isinstance(event["queue_position"], int)
            else:
                assert isinstance(event["logs"], list)
        done = seen[-1]
        assert done["metrics"]["inference_time"] == pytest.approx(0.2, abs=0.01)
        assert "error" not in done and "error_type" not in done
        assert [entry["source"] for entry in done["logs"]] == ["USER"] * len(done["logs"])
        assert len(done["logs"]) >= 3
        for entry in done["logs"]:
            assert set(entry) == {"message", "level", "source", "timestamp"}
            assert datetime.fromisoformat(entry["timestamp"]).tzinfo is not None
        # logs=false after completion: the key is there, the value null (what fal's tests assert).
        assert (await status(http, submitted, logs="false"))["logs"] is None

        result = await http.get(submitted["response_url"])
    assert result.status_code == 200
    assert result.headers["x-fal-request-id"] == submitted["request_id"]
    assert result.headers["x-fal-billable-units"] == "1"
    output = result.json()
    assert set(output) == {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
    assert output["seed"] == 7 and output["prompt"] == "a red fox"
    assert output["has_nsfw_concepts"] == [False]
    assert output["timings"]["inference"] == pytest.approx(0.2)
    (image,) = output["images"]
    assert image["content_type"] == "image/jpeg"
    assert (image["width"], image["height"]) == ULTRA_PIXELS["1:1"]
    assert image["url"].startswith(f"{emulator.url}/files/")
    with Image.open(io.BytesIO(await image_bytes(image["url"]))) as decoded:
        assert decoded.format == "JPEG" and decoded.size == ULTRA_PIXELS["1:1"]


async def test_status_result_and_cancel_accept_both_url_forms(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0
    async with client(emulator) as http:
        submitted = await submit(http, ULTRA)
        request_id = submitted["request_id"]
        await events(http, submitted["status_url"])
        for prefix in ("fal-ai/flux-pro", ULTRA):
            base = f"/{prefix}/requests/{request_id}"
            assert (await http.get(f"{base}/status")).json()["status"] == "COMPLETED"
            assert (await http.get(base)).status_code == 200
            assert (await http.put(f"{base}/cancel")).status_code == 400  # already completed
        for wrong in ("fal-ai/flux", "fal-ai/flux-pro/v1.1", "other/app"):
            response = await http.get(f"/{wrong}/requests/{request_id}/status")
            assert response.status_code == 404
            assert "x-fal-request-id" in response.headers
        assert (await http.get(f"/fal-ai/flux-pro/requests/{uuid.uuid4()}")).status_code == 404


async def test_apps_that_route_only_one_url_form(emulator: Emulator) -> None:
    async with client(emulator) as http:
        emulator.config.request_routes = "app"
        submitted = await submit(http, ULTRA)
        full = submitted["status_url"].replace("/fal-ai/flux-pro/", "/fal-ai/flux-pro/v1.1-ultra/")
        assert (await http.get(full)).status_code == 405
        assert (await http.get(submitted["status_url"])).status_code == 200

        emulator.config.request_routes = "full_path"
        submitted = await submit(http, ULTRA)
        assert "/fal-ai/flux-pro/v1.1-ultra/requests/" in submitted["status_url"]
        short = submitted["status_url"].replace("/fal-ai/flux-pro/v1.1-ultra/", "/fal-ai/flux-pro/")
        refused = await http.get(short)
        assert refused.status_code == 404 and refused.json()["message"] == "Path /v1.1-ultra not found"
        assert (await http.get(submitted["status_url"])).status_code == 200
        cancelled = await http.put(submitted["cancel_url"])  # the URLs fal returned always work
        assert cancelled.status_code == 202


@pytest.mark.parametrize(
    ("logs", "expect_list"), [("true", True), ("1", True), ("false", False), ("0", False), (None, False)]
)
async def test_logs_flag_spellings(emulator: Emulator, logs: str | None, expect_list: bool) -> None:
    emulator.config.job_seconds = 30
    async with client(emulator) as http:
        submitted = await submit(http)
        params = {} if logs is None else {"logs": logs}
        body = await status(http, submitted, **params)
        assert body["status"] == "IN_PROGRESS"
        assert "logs" in body
        assert isinstance(body["logs"], list) if expect_list else body["logs"] is None
        assert (await http.get(submitted["status_url"], params={"logs": "maybe"})).status_code == 422
        await http.put(submitted["cancel_url"])


async def test_result_before_completion_is_400_in_progress(emulator: Emulator) -> None:
    emulator.config.job_seconds = 30
    async with client(emulator) as http:
        submitted = await submit(http)
        response = await http.get(submitted["response_url"])
        assert response.status_code == 400
        assert response.json() == {"detail": "Request is still in progress"}
        assert response.headers["x-fal-request-id"] == submitted["request_id"]
        await http.put(submitted["cancel_url"])


async def test_stream_pushes_completion_promptly_and_closes(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.3
    async with client(emulator) as http:
        started = time.monotonic()
        submitted = await submit(http)
        await events(http, submitted["status_url"], logs="0")
        elapsed = time.monotonic() - started
        result = await http.get(submitted["response_url"])
    assert result.status_code == 200
    # The stream ends with the job, not on some later poll; how soon exactly is the benchmark's job.
    assert 0.3 <= elapsed < 2.0


async def test_logs_appear_over_time(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.25
    async with client(emulator) as http:
        seen = await events(http, (await submit(http))["status_url"])
    counts = [len(event["logs"]) for event in seen if event["status"] != "IN_QUEUE"]
    assert counts == sorted(counts) and counts[0] < counts[-1]


# --------------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize("aspect_ratio", ["21:9", "16:9", "4:3", "1:1", "9:16", "9:21"])
async def test_ultra_renders_fal_sizes(emulator: Emulator, aspect_ratio: str) -> None:
    emulator.config.job_seconds = 0
    async with client(emulator) as http:
        result = await finish(http, await submit(http, ULTRA, {"prompt": "x", "aspect_ratio": aspect_ratio}))
    (image,) = result.json()["images"]
    assert (image["width"], image["height"]) == ULTRA_PIXELS[aspect_ratio]
    with Image.open(io.BytesIO(await image_bytes(image["url"]))) as decoded:
        assert decoded.size == ULTRA_PIXELS[aspect_ratio]


async def test_image_size_png_and_several_images(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0
    body = {
        "prompt": "x",
        "image_size": {"width": 640, "height": 320},
        "output_format": "png",
        "num_images": 3,
    }
    async with client(emulator) as http:
        result = await finish(http, await submit(http, "fal-ai/flux-pro/v1.1", body))
        assert result.headers["x-fal-billable-units"] == "3"  # 3 images of under one megapixel
        output = result.json()
        assert len(output["images"]) == 3 and output["has_nsfw_concepts"] == [False] * 3
        files = [await image_bytes(image["url"]) for image in output["images"]]
    assert len(set(files)) == 3
    for image, data in zip(output["images"], files, strict=True):
        assert image["content_type"] == "image/png" and data.startswith(b"\x89PNG")
        assert (image["width"], image["height"]) == (640, 320)
    async with httpx.AsyncClient() as cdn:
        assert (await cdn.get(output["images"][0]["url"])).headers["content-type"] == "image/png"


async def test_same_prompt_and_seed_give_identical_files(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0
    async with client(emulator) as http:

        async def render(prompt: str, seed: int | None) -> tuple[int, bytes]:
            body: dict[str, Any] = {"prompt": prompt, "image_size": "square"}
            if seed is not None:
                body["seed"] = seed
            output = (await finish(http, await submit(http, "fal-ai/flux/dev", body))).json()
            return output["seed"], await image_bytes(output["images"][0]["url"])

        first = await render("a blue bird", 11)
        assert first == await render("a blue bird", 11)
        assert first[1] != (await render("a blue bird", 12))[1]
        assert first[1] != (await render("a red bird", 11))[1]
        random_seed, _ = await render("a blue bird", None)
    assert isinstance(random_seed, int)


async def test_photo_look_has_a_photos_grain_and_stays_deterministic(emulator: Emulator) -> None:
    """Benchmarks decode these files: flat shapes would make a client's image work look cheap."""
    emulator.config.job_seconds = 0
    body = {"prompt": "a street market", "seed": 5, "image_size": {"width": 1024, "height": 768}}
    async with client(emulator) as http:

        async def one() -> bytes:
            output = (await finish(http, await submit(http, "fal-ai/flux/dev", body))).json()
            return await image_bytes(output["images"][0]["url"])

        flat = await one()
        emulator.config.look = "photo"
        photo = await one()
        assert photo == await one()
    with Image.open(io.BytesIO(photo)) as decoded:
        assert decoded.size == (1024, 768)
        # A photo's JPEG at quality 90 takes 1.5 to 4 bits a pixel; flat shapes take well under one.
        assert 1.5 <= len(photo) * 8 / (1024 * 768) <= 4
    assert len(photo) > 4 * len(flat)


async def test_sync_mode_returns_data_uris(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0
    async with client(emulator) as http:
        output = (await finish(http, await submit(http, body={"prompt": "x", "sync_mode": True}))).json()
    url = output["images"][0]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1])[:2] == b"\xff\xd8"


# --------------------------------------------------------------------------------------------------
# Validation quirk


async def test_invalid_input_is_accepted_then_422_on_result(emulator: Emulator) -> None:
    body = {"safety_tolerance": 2, "num_images": 9, "aspect_ratio": "5:4"}
    async with client(emulator) as http:
        submitted = await submit(http, ULTRA, body)
        seen = await events(http, submitted["status_url"])
        assert "error" not in seen[-1] and "error_type" not in seen[-1]  # a plain COMPLETED
        result = await http.get(submitted["response_url"])
    assert result.status_code == 422
    assert result.headers["x-fal-request-id"] == submitted["request_id"]
    detail = {tuple(error["loc"]): error["type"] for error in result.json()["detail"]}
    assert detail == {
        ("body", "prompt"): "missing",
        ("body", "safety_tolerance"): "literal_error",
        ("body", "num_images"): "less_than_equal",
        ("body", "aspect_ratio"): "literal_error",
    }
    assert all("msg" in error for error in result.json()["detail"])


async def test_validate_at_submit_rejects_without_a_job(emulator: Emulator) -> None:
    emulator.config.validate_at_submit = True
    async with client(emulator) as http:
        response = await http.post(f"/{SCHNELL}", json={"prompt": "x", "num_inference_steps": 50})
        bad_json = await http.post(
            f"/{SCHNELL}", content=b"{nope", headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]
    assert bad_json.status_code == 422 and bad_json.json()["detail"][0]["type"] == "json_invalid"
    assert emulator.jobs() == []


async def test_unknown_fields_dropped_by_default_or_rejected(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0
    body = {"prompt": "x", "image_size": "square_hd", "colour": "blue"}
    async with client(emulator) as http:
        dropped = await finish(http, await submit(http, ULTRA, body))  # ultra has no image_size either
        assert dropped.status_code == 200
        emulator.config.reject_unknown_fields = True
        rejected = await finish(http, await submit(http, ULTRA, body))
    assert rejected.status_code == 422
    assert {tuple(e["loc"]): e["type"] for e in rejected.json()["detail"]} == {
        ("body", "image_size"): "extra_forbidden",
        ("body", "colour"): "extra_forbidden",
    }


@pytest.mark.parametrize("path", ["/fal-ai/nope", "/fal-ai/flux-pro/v9", "/single", "/run/fal-ai/nope/x"])
async def test_unknown_endpoint_is_404(emulator: Emulator, path: str) -> None:
    async with client(emulator) as http:
        response = await http.post(path, json={"prompt": "x"})
    assert response.status_code == 404
    assert "detail" in response.json() and "x-fal-request-id" in response.headers


# --------------------------------------------------------------------------------------------------
# Auth


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "No user found for Key ID and Secret"),
        ("Key wrong-id:wrong-secret", "No user found for Key ID and Secret"),
        ("Bearer emulator-key-id:emulator-key-secret", "No user found for Key ID and Secret"),
        ("Key no-colon", "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'."),
    ],
)
async def test_bad_keys_are_401(emulator: Emulator, authorization: str | None, detail: str) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=emulator.url, headers=headers) as http:
        for response in (
            await http.post(f"/{SCHNELL}", json={"prompt": "x"}),
            await http.post("/run/fal-ai/flux/schnell", json={"prompt": "x"}),
            await http.get(f"/fal-ai/flux/requests/{uuid.uuid4()}/status"),
            await http.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}),
        ):
            assert response.status_code == 401
            # fal's words first (what clients match on), then the key this emulator wants.
            assert list(response.json()) == ["detail"] and response.json()["detail"].startswith(detail)
            assert response.json()["detail"].endswith(f"accepts the key {emulator.key}; set FAL_KEY to it.")
            assert "x-fal-request-id" in response.headers


async def test_accept_any_key_and_locked_account(emulator: Emulator) -> None:
    async with client(emulator, key="someone:else") as http:
        assert (await http.post(f"/{SCHNELL}", json={"prompt": "x"})).status_code == 401
        emulator.config.accept_any_key = True
        assert (await http.post(f"/{SCHNELL}", json={"prompt": "x"})).status_code == 200
        emulator.config.locked = True
        locked = await http.post(f"/{SCHNELL}", json={"prompt": "x"})
    assert locked.status_code == 403
    assert locked.json()["detail"].startswith("User is locked. Reason: Exhausted balance.")


# --------------------------------------------------------------------------------------------------
# Queueing


async def test_max_concurrent_queues_with_real_positions(emulator: Emulator) -> None:
    emulator.config.max_concurrent = 1
    emulator.config.job_seconds = 30
    async with client(emulator) as http:
        jobs = [await submit(http) for _ in range(3)]
        assert [job["queue_position"] for job in jobs] == [0, 0, 1]
        assert (await status(http, jobs[0]))["status"] == "IN_PROGRESS"
        assert [(await status(http, job))["queue_position"] for job in jobs[1:]] == [0, 1]
        await http.put(jobs[0]["cancel_url"])  # frees the slot: the next in line starts at once
        assert (await status(http, jobs[1]))["status"] == "IN_PROGRESS"
        assert (await status(http, jobs[2]))["queue_position"] == 0
        assert [info.state for info in emulator.jobs()] == ["COMPLETED", "IN_PROGRESS", "IN_QUEUE"]
        await http.put(jobs[1]["cancel_url"])
        assert (await status(http, jobs[2]))["status"] == "IN_PROGRESS"
        await http.put(jobs[2]["cancel_url"])
    assert [info.started for info in emulator.jobs()] == [True, True, True]


async def test_low_priority_waits_behind_normal(emulator: Emulator) -> None:
    emulator.config.max_concurrent = 0
    async with client(emulator) as http:
        low = await submit(http, headers={"X-Fal-Queue-Priority": "low"})
        normal = await submit(http, headers={"X-Fal-Queue-Priority": "normal"})
        assert (await status(http, low))["queue_position"] == 1
        assert (await status(http, normal))["queue_position"] == 0
        bad = await http.post(f"/{SCHNELL}", json={"prompt": "x"}, headers={"X-Fal-Queue-Priority": "high"})
        assert bad.status_code == 422
        emulator.config.max_concurrent = 1
        await events(http, normal["status_url"])
        assert (await status(http, low))["status"] != "IN_QUEUE"
    assert emulator.job(low["request_id"]).priority == "low"


async def test_phantom_queue_positions_count_down(emulator: Emulator) -> None:
    emulator.config.queue_depth = 3
    emulator.config.queue_step_seconds = 0.05
    emulator.config.job_seconds = 0.05
    async with client(emulator) as http:
        submitted = await submit(http)
        assert submitted["queue_position"] == 3
        seen = await events(http, submitted["status_url"], logs="0")
    positions = [event["queue_position"] for event in seen if event["status"] == "IN_QUEUE"]
    assert positions[-1] in (0, 1) and positions == sorted(positions, reverse=True)
    assert len(positions) >= 2


# --------------------------------------------------------------------------------------------------
# Cancel


async def test_cancel_queued_job_status_style(emulator: Emulator) -> None:
    emulator.config.max_concurrent = 0
    async with client(emulator) as http:
        submitted = await submit(http)
        response = await http.put(submitted["cancel_url"])
        assert response.status_code == 202
        assert response.json() == {"status": "CANCELLATION_REQUESTED"}
        done = await status(http, submitted, logs="1")
        assert done["status"] == "COMPLETED" and done["error_type"] == "client_cancelled"
        assert done["metrics"] == {} and done["logs"] == []
        result = await http.get(submitted["response_url"])
        assert result.status_code == 499
        assert result.json()["error_type"] == "client_cancelled"
        again = await http.put(submitted["cancel_url"])
        assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
        missing = await http.put(f"/fal-ai/flux/requests/{uuid.uuid4()}/cancel")
        assert (missing.status_code, missing.json()) == (404, {"status": "NOT_FOUND"})
    info = emulator.job(submitted["request_id"])
    assert info.cancelled and not info.started


async def test_cancel_in_progress_honoured_or_not(emulator: Emulator) -> None:
    emulator.config.job_seconds = 30
    async with client(emulator) as http:
        running = await submit(http)
        assert (await status(http, running))["status"] == "IN_PROGRESS"
        assert (await http.put(running["cancel_url"])).status_code == 202
        assert (await http.get(running["response_url"])).status_code == 499

        emulator.config.job_seconds = 0.05
        emulator.config.cancel_in_progress_honoured = False
        stubborn = await submit(http)
        assert (await http.put(stubborn["cancel_url"])).status_code == 202
        assert (await finish(http, stubborn)).status_code == 200
    info = emulator.job(stubborn["request_id"])
    assert info.cancel_requested and not info.cancelled


async def test_cancel_openapi_style(emulator: Emulator) -> None:
    emulator.config.cancel_style = "openapi"
    emulator.config.max_concurrent = 0
    async with client(emulator) as http:
        submitted = await submit(http)
        first = await http.put(submitted["cancel_url"])
        second = await http.put(submitted["cancel_url"])
    assert (first.status_code, first.json()) == (200, {"success": True})
    assert (second.status_code, second.json()) == (200, {"success": False})


# --------------------------------------------------------------------------------------------------
# Start timeout and triggers


async def test_start_timeout_ends_in_504_user(emulator: Emulator) -> None:
    emulator.config.max_concurrent = 0
    async with client(emulator) as http:
        submitted = await submit(http, headers={"X-Fal-Request-Timeout": "0.1"})
        seen = await events(http, submitted["status_url"])
        assert seen[-1]["error_type"] == "startup_timeout" and seen[-1]["error"]
        result = await http.get(submitted["response_url"])
        bad = await http.post(f"/{SCHNELL}", json={"prompt": "x"}, headers={"X-Fal-Request-Timeout": "soon"})
    assert result.status_code == 504
    assert result.headers["x-fal-request-timeout-type"] == "user"
    assert result.json() == {"detail": result.json()["detail"], "error_type": "startup_timeout"}
    assert emulator.job(submitted["request_id"]).start_timeout == 0.1
    assert bad.status_code == 422


async def test_content_policy_trigger(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.05
    async with client(emulator) as http:
        submitted = await submit(http, body={"prompt": "something Forbidden here"})
        seen = await events(http, submitted["status_url"])
        result = await http.get(submitted["response_url"])
    assert "error_type" not in seen[-1]
    assert result.status_code == 422
    (error,) = result.json()["detail"]
    assert error["type"] == "content_policy_violation" and error["loc"] == ["body", "prompt"]
    assert error["url"] == "https://docs.fal.ai/errors#content_policy_violation"


async def test_nsfw_trigger_gives_black_image(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.05
    async with client(emulator) as http:
        submitted = await submit(http, body={"prompt": "nsfw thing", "image_size": "square"})
        output = (await finish(http, submitted)).json()
    assert output["has_nsfw_concepts"] == [True]
    with Image.open(io.BytesIO(await image_bytes(output["images"][0]["url"]))) as decoded:
        assert decoded.convert("L").getextrema()[1] < 8


async def test_runner_failure_trigger(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.05
    async with client(emulator) as http:
        submitted = await submit(http, body={"prompt": "please runner-crash"})
        seen = await events(http, submitted["status_url"])
        result = await http.get(submitted["response_url"])
    assert seen[-1]["error_type"] == "runner_disconnected"
    assert result.status_code == 503
    assert result.json()["error_type"] == "runner_disconnected" and isinstance(result.json()["detail"], str)
    assert result.headers["x-fal-error-type"] == "runner_disconnected"
    assert result.headers["x-fal-request-id"] == submitted["request_id"]


# --------------------------------------------------------------------------------------------------
# Synchronous run


async def test_run_waits_and_answers_with_the_output(emulator: Emulator) -> None:
    async with client(emulator) as http:
        started = time.monotonic()
        response = await http.post(f"/run/{ULTRA}", json={"prompt": "x", "aspect_ratio": "9:16"})
        assert time.monotonic() - started >= 0.2
        assert response.status_code == 200
        assert response.json()["images"][0]["width"] == ULTRA_PIXELS["9:16"][0]
        run_id = response.headers["x-fal-request-id"]
        assert (await http.get(f"/fal-ai/flux-pro/requests/{run_id}/status")).status_code == 404
        invalid = await http.post(f"/run/{ULTRA}", json={"aspect_ratio": "9:16"})
        assert invalid.status_code == 422
        emulator.config.max_concurrent = 0
        busy = await http.post(f"/run/{ULTRA}", json={"prompt": "x"})
    assert busy.status_code == 429
    assert emulator.counters["run"] == 3


# --------------------------------------------------------------------------------------------------
# Fault injection


async def test_error_faults(emulator: Emulator) -> None:
    emulator.inject("submit", "429", count=2, retry_after=3)
    emulator.inject("status", "502_nginx")
    async with client(emulator) as http:
        for _ in range(2):
            limited = await http.post(f"/{SCHNELL}", json={"prompt": "x"})
            assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
            assert "x-fal-request-id" in limited.headers
        submitted = await submit(http)  # the third goes through
        nginx = await http.get(submitted["status_url"])
        assert nginx.status_code == 502 and "nginx" in nginx.text
        assert "x-fal-request-id" not in nginx.headers
        emulator.inject("any", "503_fal")
        unavailable = await http.get(submitted["response_url"])
        assert unavailable.status_code == 503 and "x-fal-request-id" in unavailable.headers
        emulator.inject("result", "500")
        emulator.inject("result", "429")
        assert (await http.get(submitted["response_url"])).status_code == 500
        no_hint = await http.get(submitted["response_url"])
        assert no_hint.status_code == 429 and "retry-after" not in no_hint.headers
    assert emulator.counters["submit"] == 3
    with pytest.raises(ValueError):
        emulator.inject("submit", "teapot")
    with pytest.raises(ValueError):
        emulator.inject("nothing", "429")


async def test_slow_submit_still_creates_the_job(emulator: Emulator) -> None:
    emulator.inject("submit", "slow", delay=1.0)
    async with client(emulator) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"/{SCHNELL}", json={"prompt": "x"}, timeout=0.2)
    assert len(emulator.jobs()) == 1


async def test_drop_faults(emulator: Emulator) -> None:
    emulator.inject("submit", "drop")
    emulator.inject("submit", "drop_before")
    async with client(emulator) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(f"/{SCHNELL}", json={"prompt": "x"})
        assert len(emulator.jobs()) == 1  # processed, then the answer was lost
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(f"/{SCHNELL}", json={"prompt": "x"})
        assert len(emulator.jobs()) == 1  # dropped before anything happened
        await submit(http)
    assert emulator.counters["submit"] == 3


# --------------------------------------------------------------------------------------------------
# Webhooks


class Receiver:
    """A tiny webhook receiver that answers ``statuses`` in turn (then 200) and queues deliveries."""

    def __init__(self) -> None:
        self.deliveries: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                if code == 200:
                    receiver.deliveries.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.handler = Handler
        self.url = ""

    async def next(self) -> tuple[dict[str, str], bytes]:
        return await anyio.to_thread.run_sync(lambda: self.deliveries.get(timeout=5))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    with serve_handler(hook.handler) as origin:
        hook.url = f"{origin}/hook"
        yield hook


async def test_webhook_is_delivered_signed_and_retried(emulator: Emulator, receiver: Receiver) -> None:
    emulator.config.job_seconds = 0.05
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    receiver.statuses = [500]  # the first attempt fails; the emulator retries
    async with client(emulator) as http:
        submitted = await submit(http, params={"fal_webhook": receiver.url})
        headers, raw = await receiver.next()
        result = (await http.get(submitted["response_url"])).json()
        jwks = (await http.get("/.well-known/jwks.json")).json()
    body = json.loads(raw)
    assert body == {
        "request_id": submitted["request_id"],
        "gateway_request_id": submitted["request_id"],
        "status": "OK",
        "payload": result,
        "error": None,
    }
    assert emulator.job(submitted["request_id"]).webhook_url == receiver.url
    assert headers["x-fal-webhook-request-id"] == submitted["request_id"]
    assert headers["x-fal-webhook-user-id"] == emulator.config.user_id
    assert abs(int(headers["x-fal-webhook-timestamp"]) - time.time()) < 60
    message = "\n".join(
        (
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            headers["x-fal-webhook-timestamp"],
            hashlib.sha256(raw).hexdigest(),
        )
    ).encode()
    (jwk,) = jwks["keys"]
    assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
    public = Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    )
    public.verify(bytes.fromhex(headers["x-fal-webhook-signature"]), message)  # raises if forged


async def test_webhook_reports_errors(emulator: Emulator, receiver: Receiver) -> None:
    emulator.config.job_seconds = 0.05
    async with client(emulator) as http:
        await submit(http, body={"prompt": "forbidden"}, params={"fal_webhook": receiver.url})
        _, raw = await receiver.next()
    body = json.loads(raw)
    assert body["status"] == "ERROR" and body["error"] == "Invalid status code: 422"
    assert body["payload"]["detail"][0]["type"] == "content_policy_violation"


# --------------------------------------------------------------------------------------------------
# Storage


async def cdn_token(http: httpx.AsyncClient) -> str:
    response = await http.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={})
    assert response.status_code == 200
    token = response.json()
    assert token["token_type"] == "Bearer" and token["base_url"] == str(http.base_url).rstrip("/")
    assert datetime.fromisoformat(token["expires_at"]) > datetime.now(UTC)
    assert token["expires_at"].endswith("+00:00")
    return token["token"]


async def test_single_upload_and_file_serving(emulator: Emulator) -> None:
    async with client(emulator) as http:
        token = await cdn_token(http)
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "image/png",
            "X-Fal-File-Name": "my cat.png",
        }
        response = await http.post("/files/upload", content=b"\x89PNG fake", headers=headers)
        assert response.status_code == 200
        url = response.json()["access_url"]
        assert url.startswith(f"{emulator.url}/files/") and url.endswith("_my_cat.png")
        bad = await http.post(
            "/files/upload", content=b"x", headers={**headers, "Authorization": "Bearer nope"}
        )
        assert bad.status_code == 401
    async with httpx.AsyncClient() as cdn:
        served = await cdn.get(url)
        head = await cdn.head(url)
        missing = await cdn.get(f"{emulator.url}/files/zebra/none.png")
    assert served.content == b"\x89PNG fake"
    assert served.headers["content-type"] == "image/png" and served.headers["content-length"] == "9"
    assert head.status_code == 200 and head.headers["content-length"] == "9"
    assert missing.status_code == 404
    assert emulator.counters["file"] == 3 and emulator.counters["upload"] == 2


async def test_multipart_upload_sorts_parts_and_checks_etags(emulator: Emulator) -> None:
    parts = [b"a" * 1000, b"b" * 1000, b"c" * 10]
    async with client(emulator) as http:
        auth = {"Authorization": f"Bearer {await cdn_token(http)}"}
        created = await http.post(
            "/files/upload/multipart",
            headers={**auth, "Content-Type": "video/mp4", "X-Fal-File-Name": "big.mp4"},
        )
        access_url, upload_id = created.json()["access_url"], created.json()["uploadId"]
        etags = {}
        for number in (3, 1, 2):
            put = await http.put(
                f"{access_url}/multipart/{upload_id}/{number}", content=parts[number - 1], headers=auth
            )
            assert put.status_code == 200
            etags[number] = put.headers["etag"]
        listed = [{"partNumber": n, "etag": etags[n]} for n in (2, 3, 1)]
        wrong = await http.post(
            f"{access_url}/multipart/{upload_id}/complete",
            json={"parts": [{"partNumber": 1, "etag": '"0"'}]},
            headers=auth,
        )
        assert wrong.status_code == 400
        done = await http.post(
            f"{access_url}/multipart/{upload_id}/complete", json={"parts": listed}, headers=auth
        )
        assert done.status_code == 200
        served = await http.get(access_url)
    assert served.content == b"".join(parts) and served.headers["content-type"] == "video/mp4"
    assert emulator.counters["multipart_part"] == 3 and emulator.counters["multipart_complete"] == 2


@pytest.mark.parametrize("storage_type", ["gcs", "fal-cdn-v3"])
async def test_initiate_and_signed_put(emulator: Emulator, storage_type: str) -> None:
    async with client(emulator) as http:
        initiated = await http.post(
            "/storage/upload/initiate",
            params={"storage_type": storage_type},
            json={"file_name": "notes.txt", "content_type": "text/plain"},
        )
        assert initiated.status_code == 200
        upload_url, file_url = initiated.json()["upload_url"], initiated.json()["file_url"]
        forged = await http.put(upload_url.split("?")[0] + "?signature=bad", content=b"x")
        assert forged.status_code == 403
        put = await http.put(upload_url, content=b"hello", headers={"Content-Type": "text/plain"})
        assert put.status_code == 200
        served = await http.get(file_url)
    assert served.content == b"hello" and served.headers["content-type"].startswith("text/plain")
    assert emulator.counters["initiate"] == 1 and emulator.counters["signed_put"] == 2


# --------------------------------------------------------------------------------------------------
# Counters and lifecycle


async def test_counters_count_by_kind_and_reset(emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.05
    emulator.inject("status", "500")
    async with client(emulator) as http:
        submitted = await submit(http)
        await http.get(submitted["status_url"])
        await http.get(submitted["status_url"])
        await http.get(submitted["response_url"])
    assert (emulator.counters["submit"], emulator.counters["status"], emulator.counters["result"]) == (
        1,
        2,
        1,
    )
    emulator.reset_counters()
    assert sum(emulator.counters.values()) == 0


def test_exit_is_prompt_with_an_open_stream() -> None:
    emu = Emulator(EmulatorConfig(max_concurrent=0)).start()
    opened = threading.Event()

    def listen() -> None:
        with httpx.Client(headers={"Authorization": f"Key {emu.key}"}, timeout=10) as http:
            submitted = http.post(f"{emu.url}/{SCHNELL}", json={"prompt": "x"}).json()
            try:
                with http.stream("GET", f"{submitted['status_url']}/stream") as response:
                    for _ in response.iter_lines():
                        opened.set()
            except httpx.HTTPError:
                pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(5)
    started = time.monotonic()
    emu.stop()
    # Stopping does not wait for the open stream to end (it never would): the grace period, not a hang.
    assert time.monotonic() - started < 3.0
    listener.join(2)
    assert not listener.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{emu.url}/.well-known/jwks.json")
