"""The emulator's FLUX.2, Kontext multi and Fill endpoints over real HTTP: fal's validation, the right
output sizes and shapes, and edits that visibly derive from their input images."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.fal import FalClient, ValidationError
from fal_flux_mcp.settings import Settings

pytestmark = pytest.mark.anyio

RED, BLUE, WHITE, BLACK = (220, 20, 20), (20, 20, 220), (255, 255, 255), (0, 0, 0)


def png(
    size: tuple[int, int], colour: tuple[int, int, int], box: tuple[int, int, int, int] | None = None
) -> bytes:
    """A ``colour`` image of ``size``; with ``box``, white inside it on black (a mask)."""
    image = Image.new("RGB", size, BLACK if box else colour)
    if box:
        image.paste(WHITE, box)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
async def fal(settings: Settings) -> AsyncIterator[FalClient]:
    async with FalClient.from_settings(settings) as client:
        yield client


async def upload(fal: FalClient, data: bytes) -> str:
    return await fal.upload_bytes(data, content_type="image/png", file_name="input.png")


async def run(
    fal: FalClient, emulator: Emulator, endpoint_id: str, arguments: dict[str, Any]
) -> tuple[dict[str, Any], Image.Image]:
    """Submit, wait, and return fal's output as sent (raw JSON) and its first image."""
    handle = await fal.submit(endpoint_id, arguments)
    await fal.wait(handle)
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Key {emulator.key}"}) as http:
        response = await http.get(handle.response_url)
        assert response.status_code == 200, response.text
        body = response.json()
        image = Image.open(io.BytesIO((await http.get(body["images"][0]["url"])).content)).convert("RGB")
    return body, image


async def raw_result(emulator: Emulator, endpoint_id: str, arguments: dict[str, Any]) -> httpx.Response:
    """Submit JSON as is (no client-side check, as any client may send it) and fetch its result."""
    headers = {"Authorization": f"Key {emulator.key}"}
    async with httpx.AsyncClient(base_url=emulator.url, headers=headers, timeout=10) as http:
        submitted = (await http.post(f"/{endpoint_id}", json=arguments)).json()
        with anyio.fail_after(5):
            while (await http.get(submitted["status_url"])).json()["status"] != "COMPLETED":
                await anyio.sleep(0.02)
        return await http.get(submitted["response_url"])


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 70) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


async def test_a_flux_2_edit_shows_its_input_at_its_size_and_answers_images_and_seed_only(
    emulator: Emulator, fal: FalClient
) -> None:
    red = await upload(fal, png((640, 480), RED))

    body, image = await run(
        fal, emulator, "fal-ai/flux-2-pro/edit", {"prompt": "make it dusk", "image_urls": [red]}
    )

    assert set(body) == {"images", "seed"}
    assert image.size == (640, 480)  # image_size "auto": the input's size
    assert near(image.getpixel((320, 100)), RED)  # the input, changed but recognisable


async def test_a_multi_image_edit_tiles_its_inputs(emulator: Emulator, fal: FalClient) -> None:
    red, blue = await upload(fal, png((512, 512), RED)), await upload(fal, png((512, 512), BLUE))

    body, image = await run(
        fal,
        emulator,
        "fal-ai/flux-pro/kontext/max/multi",
        {"prompt": "put them together", "image_urls": [red, blue]},
    )

    assert {"images", "seed", "timings", "has_nsfw_concepts", "prompt"} <= set(body)
    width, height = image.size
    assert near(image.getpixel((width // 4, height // 3)), RED)
    assert near(image.getpixel((3 * width // 4, height // 3)), BLUE)


async def test_fill_changes_only_the_masked_part(emulator: Emulator, fal: FalClient) -> None:
    image_url = await upload(fal, png((400, 300), BLUE))
    mask_url = await upload(fal, png((400, 300), WHITE, box=(0, 0, 200, 300)))  # the left half changes

    _, image = await run(
        fal,
        emulator,
        "fal-ai/flux-pro/v1/fill",
        {"prompt": "a brick wall", "image_url": image_url, "mask_url": mask_url},
    )

    assert image.size == (400, 300)
    assert near(image.getpixel((300, 100)), BLUE, tolerance=25)  # outside the mask: untouched
    assert not near(image.getpixel((100, 100)), BLUE, tolerance=25)  # inside: repainted


async def test_fill_refuses_a_mask_of_another_size_with_a_422(fal: FalClient) -> None:
    image_url = await upload(fal, png((400, 300), BLUE))
    mask_url = await upload(fal, png((200, 200), WHITE, box=(0, 0, 50, 50)))

    handle = await fal.submit(
        "fal-ai/flux-pro/v1/fill", {"prompt": "a hat", "image_url": image_url, "mask_url": mask_url}
    )
    with pytest.raises(ValidationError, match="mask") as caught:
        await fal.wait(handle)
    assert caught.value.status_code == 422


async def test_an_input_the_cdn_no_longer_keeps_fails_the_edit(emulator: Emulator, fal: FalClient) -> None:
    red = await upload(fal, png((64, 64), RED))
    emulator.expire_file(red)

    handle = await fal.submit("fal-ai/flux-pro/kontext", {"prompt": "x", "image_url": red})
    with pytest.raises(ValidationError, match="download"):
        await fal.wait(handle)


@pytest.mark.parametrize(
    ("endpoint_id", "arguments", "field"),
    [
        ("fal-ai/flux-2-pro", {"prompt": "x", "num_images": 2}, "num_images"),
        ("fal-ai/flux-2-pro", {"prompt": "x", "safety_tolerance": "6"}, "safety_tolerance"),
        ("fal-ai/flux-2-max/edit", {"prompt": "x"}, "image_urls"),
        ("fal-ai/flux-2-flex", {"prompt": "x", "guidance_scale": 12}, "guidance_scale"),
        ("fal-ai/flux-2/flash", {"prompt": "x", "safety_tolerance": "2"}, "safety_tolerance"),
        ("fal-ai/flux-pro/v1/fill", {"prompt": "x", "image_url": "https://a/b.png"}, "mask_url"),
        ("fal-ai/flux-pro/v1.1-ultra-finetuned", {"prompt": "x", "finetune_id": "f"}, "finetune_strength"),
    ],
)
async def test_fal_validation_of_the_new_endpoints(
    emulator: Emulator, endpoint_id: str, arguments: dict[str, Any], field: str
) -> None:
    emulator.config.reject_unknown_fields = True  # a field the model does not take, as fal may answer it
    result = await raw_result(emulator, endpoint_id, arguments)
    assert result.status_code == 422
    assert [entry["loc"] for entry in result.json()["detail"]] == [["body", field]]


async def test_the_pricing_api_knows_the_new_prices(emulator: Emulator) -> None:
    ids = "fal-ai/flux-2-pro,fal-ai/flux-2-max/edit,fal-ai/flux-pro/kontext/multi,fal-ai/flux-pro/v1/fill"
    async with httpx.AsyncClient(headers={"Authorization": f"Key {emulator.key}"}) as http:
        answer = (await http.get(f"{emulator.url}/v1/models/pricing", params={"endpoint_id": ids})).json()
    prices = {item["endpoint_id"]: item["unit_price"] for item in answer["prices"]}
    assert prices == {
        "fal-ai/flux-2-pro": 0.03,
        "fal-ai/flux-2-max/edit": 0.07,
        "fal-ai/flux-pro/kontext/multi": 0.04,
        "fal-ai/flux-pro/v1/fill": 0.05,
    }
