"""The FLUX family and edit_image through a real MCP client (in memory) against the emulator over HTTP.

For each new endpoint: a call that works, a field the model does not take, and a missing input, the
last two refused before anything reaches fal. Then editing: the editor chosen for the inputs, inputs
from local files and from previous results (also once fal's copy is gone), and a mask of the wrong
size refused before anything is uploaded or paid.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult, ElicitResult
from PIL import Image

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings

pytestmark = pytest.mark.anyio

RED, BLUE, WHITE, BLACK = (220, 20, 20), (20, 20, 220), (255, 255, 255), (0, 0, 0)


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def write_png(
    path: Path, size: tuple[int, int], colour: tuple[int, int, int], box: tuple[int, ...] = ()
) -> str:
    """A ``colour`` PNG of ``size`` at ``path``; with ``box``, a mask: white inside it on black."""
    image = Image.new("RGB", size, BLACK if box else colour)
    if box:
        image.paste(WHITE, box)
    image.save(path, "PNG")
    return str(path)


@pytest.fixture
def folder(settings: Settings) -> Path:
    """The allowed folder, holding a red and a blue photo and a mask for the red one's left half."""
    allowed = settings.allowed_dirs[0]
    write_png(allowed / "red.png", (640, 480), RED)
    write_png(allowed / "blue.png", (640, 480), BLUE)
    write_png(allowed / "mask.png", (640, 480), WHITE, box=(0, 0, 320, 480))
    write_png(allowed / "small-mask.png", (100, 100), WHITE, box=(0, 0, 50, 50))
    return allowed


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    emulator.config.job_seconds = 0.05
    emulator.config.prices = {**emulator.config.prices, "fal-ai/flux-pro/v1.1-ultra-finetuned": 0.07}
    return emulator


def saved_image(result: CallToolResult, index: int = 0) -> Image.Image:
    return Image.open(
        io.BytesIO(Path(result.structured_content["images"][index]["path"]).read_bytes())
    ).convert("RGB")


# (model, a call that works, its image size, its cost, a field it does not take, a call missing an input)
CASES: list[tuple[str, dict[str, Any], tuple[int, int], float, dict[str, Any], dict[str, Any]]] = [
    (
        "fal-ai/flux-2-pro",
        {"prompt": "a knight", "aspect_ratio": "1:1"},
        (1024, 1024),
        0.03,
        {"num_images": 2},
        {"prompt": " "},
    ),
    (
        "fal-ai/flux-2-pro/edit",
        {"prompt": "flames on the cup", "image_urls": ["red.png"]},
        (640, 480),
        0.045,  # one megapixel out, one in
        {"guidance_scale": 3},
        {"prompt": "flames"},
    ),
    (
        "fal-ai/flux-2-flex",
        {"prompt": "a monster eating a donut", "num_inference_steps": 10},
        (1024, 768),
        0.05,
        {"num_images": 2},
        {"prompt": ""},
    ),
    (
        "fal-ai/flux-2-flex/edit",
        {"prompt": "gradient vase", "image_urls": ["red.png", "blue.png"]},
        (640, 480),
        0.15,  # three megapixels: one out, two in
        {"num_images": 2},
        {"prompt": "gradient vase"},
    ),
    (
        "fal-ai/flux-2-max/edit",
        {"prompt": "a magazine cover", "image_urls": ["red.png"], "image_size": "square_hd"},
        (1024, 1024),
        0.10,  # $0.07 + $0.03 for the input's megapixel
        {"num_inference_steps": 10},
        {"prompt": "a magazine cover"},
    ),
    (
        "fal-ai/flux-2/flash",
        {"prompt": "ants and a sugar cube", "num_images": 2},
        (1024, 768),
        0.01,
        {"safety_tolerance": "2"},
        {"prompt": ""},
    ),
    (
        "fal-ai/flux-pro/kontext/max",
        {"prompt": "put a donut next to the flour", "image_url": "red.png"},
        (1168, 880),  # about a megapixel, in the input's proportions
        0.08,
        {"image_size": "square_hd"},
        {"prompt": "a donut"},
    ),
    (
        "fal-ai/flux-pro/kontext/multi",
        {"prompt": "the duck on the t-shirt", "image_urls": ["red.png", "blue.png"], "aspect_ratio": "1:1"},
        (1024, 1024),
        0.04,
        {"raw": True},
        {"prompt": "the duck"},
    ),
    (
        "fal-ai/flux-pro/kontext/max/multi",
        {"prompt": "the duck on the t-shirt", "image_urls": ["red.png", "blue.png"], "num_images": 2},
        (1168, 880),
        0.16,
        {"image_size": "square"},
        {"prompt": "the duck"},
    ),
    (
        "fal-ai/flux-pro/v1/fill",
        {"prompt": "a brick wall", "image_url": "red.png", "mask_url": "mask.png"},
        (640, 480),
        0.05,
        {"guidance_scale": 3},
        {"prompt": "a brick wall", "image_url": "red.png"},
    ),
    (
        "fal-ai/flux-pro/v1.1-ultra-finetuned",
        {
            "prompt": "my dog on a beach",
            "finetune_id": "ft-123",
            "finetune_strength": 1.2,
            "aspect_ratio": "1:1",
        },
        (2048, 2048),
        0.07,  # fal's pricing API: fal publishes no list price
        {"image_size": "square_hd"},
        {"prompt": "my dog", "finetune_id": "ft-123"},
    ),
]


def local(arguments: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``arguments`` with file names turned into paths inside the allowed folder."""
    paths = {name: str(folder / name) for name in ("red.png", "blue.png", "mask.png")}
    out = dict(arguments)
    for key in ("image_url", "mask_url"):
        if key in out:
            out[key] = paths[out[key]]
    if "image_urls" in out:
        out["image_urls"] = [paths[name] for name in out["image_urls"]]
    return out


@pytest.mark.parametrize(
    ("model", "works", "size", "cost", "not_taken", "missing"), CASES, ids=[c[0] for c in CASES]
)
async def test_each_new_endpoint_through_the_tools(
    settings: Settings,
    emu: Emulator,
    folder: Path,
    model: str,
    works: dict[str, Any],
    size: tuple[int, int],
    cost: float,
    not_taken: dict[str, Any],
    missing: dict[str, Any],
) -> None:
    async with Client(build_server(settings)) as client:
        refused_field = await client.call_tool(
            "generate_image", {**local(works, folder), **not_taken, "model": model}
        )
        refused_input = await client.call_tool("generate_image", {**local(missing, folder), "model": model})
        assert emu.counters["submit"] == 0 and emu.counters["upload"] == 0  # refusals cost nothing
        result = await client.call_tool("generate_image", {**local(works, folder), "model": model})

    (field,) = not_taken
    assert refused_field.is_error and f"does not take {field}" in text_of(refused_field)
    assert refused_input.is_error and "needs" in text_of(refused_input)
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data["status"] == "completed" and data["model"] == model
    assert [(image["width"], image["height"]) for image in data["images"]] == [size] * len(data["images"])
    assert all(Path(image["path"]).is_file() for image in data["images"])
    assert data["cost_usd"] == pytest.approx(cost)
    (job,) = emu.jobs()
    assert job.endpoint_id == model and job.outcome == "ok"


async def test_edit_image_picks_the_editor_for_the_inputs_and_says_which(
    settings: Settings, emu: Emulator, folder: Path
) -> None:
    red, blue, mask = (str(folder / name) for name in ("red.png", "blue.png", "mask.png"))
    async with Client(build_server(settings)) as client:
        one = await client.call_tool("edit_image", {"prompt": "make it brighter", "image_url": red})
        several = await client.call_tool("edit_image", {"prompt": "side by side", "image_urls": [red, blue]})
        masked = await client.call_tool(
            "edit_image", {"prompt": "a brick wall", "image_url": red, "mask_url": mask}
        )
        named = await client.call_tool(
            "edit_image", {"prompt": "make it brighter", "image_url": red, "model": "fal-ai/flux-2-max/edit"}
        )

    expected = [
        (one, "fal-ai/flux-pro/kontext"),
        (several, "fal-ai/flux-pro/kontext/multi"),
        (masked, "fal-ai/flux-pro/v1/fill"),
        (named, "fal-ai/flux-2-max/edit"),
    ]
    for result, model in expected:
        assert not result.is_error, text_of(result)
        data = result.structured_content
        assert data["model"] == model and model in data["model_choice"]
        assert data["model_choice"] in text_of(result)  # stated in the text the model reads, too
        assert data["images"] and data["images"][0]["resource_uri"].startswith("flux://images/")
        assert [block.type for block in result.content].count("image") == len(data["images"])  # previews
    assert "mask" in masked.structured_content["model_choice"]
    # The edits show their inputs: the red photo, the red and blue side by side, the mask's half repainted.
    assert saved_image(one).getpixel((300, 200))[0] > 120
    both = saved_image(several)
    width, height = both.size
    assert (
        both.getpixel((width // 4, height // 3))[0] > 120
        and both.getpixel((3 * width // 4, height // 3))[2] > 120
    )
    filled = saved_image(masked)
    assert (
        filled.getpixel((500, 200))[0] > 180 and filled.getpixel((500, 200))[2] < 60
    )  # right half: untouched


async def a_generated_image(client: Client) -> dict[str, Any]:
    """A first result to edit: a schnell image, saved ($0.003)."""
    first = await client.call_tool(
        "generate_image", {"prompt": "a lighthouse", "model": "fal-ai/flux/schnell"}
    )
    assert not first.is_error, text_of(first)
    image: dict[str, Any] = first.structured_content["images"][0]
    return image


async def test_a_previous_result_is_edited_by_its_flux_uri_through_its_fal_url(
    settings: Settings, emu: Emulator
) -> None:
    async with Client(build_server(settings)) as client:
        image = await a_generated_image(client)
        uploads = emu.counters["upload"]
        edited = await client.call_tool(
            "edit_image", {"prompt": "make it brighter", "image_url": image["resource_uri"]}
        )

    assert not edited.is_error, text_of(edited)
    assert edited.structured_content["status"] == "completed"
    assert emu.counters["upload"] == uploads  # fal still had it: its URL was passed, nothing uploaded
    assert emu.jobs()[-1].input["image_url"] == image["url"]


async def test_a_previous_result_whose_fal_url_is_gone_is_uploaded_again_from_its_saved_file(
    settings: Settings, emu: Emulator
) -> None:
    async with Client(build_server(settings)) as client:
        image = await a_generated_image(client)
        emu.expire_file(image["url"])  # fal's CDN no longer keeps it
        edited = await client.call_tool(
            "edit_image",
            {
                "prompt": "make it brighter",
                "image_urls": [image["resource_uri"]],
                "model": "fal-ai/flux-2-pro/edit",
            },
        )

    assert not edited.is_error, text_of(edited)
    sent = emu.jobs()[-1].input["image_urls"][0]
    assert sent != image["url"] and sent.startswith(emu.url)  # the saved file, uploaded again
    # The edit derives from the saved picture: same size, recognisably the same colours.
    original = Image.open(image["path"]).convert("RGB")
    result = saved_image(edited)
    assert result.size == original.size
    x, y = original.width // 2, original.height // 2
    assert all(
        abs(a - b) < 90 for a, b in zip(result.getpixel((x, y)), original.getpixel((x, y)), strict=True)
    )


async def test_a_gone_result_without_its_saved_file_is_refused_before_anything_is_paid(
    settings: Settings, emu: Emulator
) -> None:
    async with Client(build_server(settings)) as client:
        image = await a_generated_image(client)
        emu.expire_file(image["url"])
        Path(image["path"]).unlink()
        edited = await client.call_tool(
            "edit_image", {"prompt": "brighter", "image_url": image["resource_uri"]}
        )
        unknown = await client.call_tool(
            "edit_image", {"prompt": "brighter", "image_url": "flux://images/nope/0"}
        )
        spend = await client.call_tool("get_spend", {})

    assert edited.is_error and "no longer on fal" in text_of(edited)
    assert unknown.is_error and "nope" in text_of(unknown)
    assert len(emu.jobs()) == 1  # only the first generation
    assert spend.structured_content["periods"][0]["total_usd"] == pytest.approx(0.003)


async def test_a_mask_of_another_size_is_refused_before_any_upload_or_spend(
    settings: Settings, emu: Emulator, folder: Path
) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "edit_image",
            {
                "prompt": "a hat",
                "image_url": str(folder / "red.png"),
                "mask_url": str(folder / "small-mask.png"),
            },
        )
        spend = await client.call_tool("get_spend", {})

    assert result.is_error
    assert "mask_url is 100x100 but image_url is 640x480" in text_of(result)
    assert emu.counters["upload"] == 0 and emu.counters["submit"] == 0
    assert spend.structured_content["periods"][0]["total_usd"] == 0


async def test_a_model_without_a_known_price_is_not_run(settings: Settings, emulator: Emulator) -> None:
    emulator.config.pricing_permission = False  # fal's pricing API refuses this key: no price at all
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "generate_image",
            {
                "prompt": "x",
                "model": "fal-ai/flux-pro/v1.1-ultra-finetuned",
                "finetune_id": "f",
                "finetune_strength": 1,
            },
        )
    assert result.is_error and "no published price" in text_of(result)
    assert emulator.counters["submit"] == 0


async def test_edit_image_rejects_unknown_arguments_with_the_nearest_name(
    settings: Settings, emu: Emulator
) -> None:
    async with Client(build_server(settings)) as client:
        misspelt = await client.call_tool(
            "edit_image", {"prompt": "x", "image_url": "https://a/b.png", "mask": "m"}
        )
        no_image = await client.call_tool("edit_image", {"prompt": "make it brighter"})
        not_an_editor = await client.call_tool(
            "edit_image", {"prompt": "x", "image_url": "https://a/b.png", "model": "fal-ai/flux/dev"}
        )
    assert misspelt.is_error and "did you mean 'mask_url'" in text_of(misspelt)
    assert no_image.is_error and "image_url" in text_of(no_image)
    assert not_an_editor.is_error and "fal-ai/flux-pro/kontext" in text_of(not_an_editor)
    assert emu.counters["submit"] == 0


async def test_list_models_groups_by_task_with_inputs_and_prices(settings: Settings, emu: Emulator) -> None:
    async with Client(build_server(settings)) as client:
        listed = (await client.call_tool("list_models", {})).structured_content
    by_task = listed["by_task"]
    assert list(by_task) == ["text-to-image", "image-edit", "multi-image-edit", "inpaint", "image-variation"]
    assert "fal-ai/flux-2-pro" in by_task["text-to-image"] and by_task["inpaint"] == [
        "fal-ai/flux-pro/v1/fill"
    ]
    assert listed["edit_defaults"] == {
        "one image": "fal-ai/flux-pro/kontext",
        "several images": "fal-ai/flux-pro/kontext/multi",
        "mask": "fal-ai/flux-pro/v1/fill",
    }
    models = {model["id"]: model for model in listed["models"]}
    assert models["fal-ai/flux-pro/v1/fill"]["inputs"] == ["image_url", "mask_url"]
    assert models["fal-ai/flux-2-max/edit"]["price"].startswith(
        "$0.07 the first megapixel, $0.03 each further one"
    )
    assert "input images included" in models["fal-ai/flux-2-max/edit"]["price"]
    assert models["fal-ai/flux-pro/kontext/multi"]["price"] == "$0.04 per image"
    assert models["fal-ai/flux-pro/v1.1-ultra-finetuned"]["price_usd"] == 0.07  # from fal's pricing API


async def test_an_edit_over_the_limit_is_asked_about_at_its_price_with_its_inputs(
    settings: Settings, emu: Emulator, folder: Path
) -> None:
    settings.max_usd_per_call = 0.04
    asked: list[str] = []

    async def approve(context: object, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    async with Client(build_server(settings), mode="legacy", elicitation_callback=approve) as client:
        result = await client.call_tool(
            "edit_image",
            {
                "prompt": "flames on the cup",
                "image_url": str(folder / "red.png"),
                "model": "fal-ai/flux-2-pro/edit",
            },
        )
    assert not result.is_error, text_of(result)
    (question,) = asked
    # $0.03 for the output's megapixel and $0.015 for the input's: the input was read to price it.
    assert "$0.045" in question and "640x480" in question and "FLUX.2 [pro] edit" in question
    assert result.structured_content["cost_usd"] == pytest.approx(0.045)
    assert result.structured_content["approval"] == "approved by the user"


async def test_a_slow_edit_hands_back_its_job_id_and_check_status_delivers_the_edit(
    settings: Settings, emulator: Emulator, folder: Path
) -> None:
    emulator.config.job_seconds = 1.0
    settings.wait_seconds = 0.3
    progress: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with Client(build_server(settings)) as client:
        first = await client.call_tool(
            "edit_image",
            {"prompt": "make it brighter", "image_url": str(folder / "red.png")},
            progress_callback=on_progress,
        )
        handed = first.structured_content
        assert handed["status"] in ("queued", "in_progress") and "check_status" in handed["message"]
        assert "fal-ai/flux-pro/kontext" in handed["model_choice"]
        done = await client.call_tool("check_status", {"job_id": handed["job_id"], "wait_seconds": 0.3})
        for _ in range(20):
            if done.structured_content["status"] == "completed":
                break
            done = await client.call_tool("check_status", {"job_id": handed["job_id"], "wait_seconds": 0.3})
    assert any(message.startswith("Submitted") for message in progress)
    assert done.structured_content["status"] == "completed"
    assert Path(done.structured_content["images"][0]["path"]).is_file()


async def test_inputs_as_data_uris_and_fal_urls_are_used_and_measured_like_local_files(
    settings: Settings, emu: Emulator, folder: Path
) -> None:
    red = (folder / "red.png").read_bytes()
    data_uri = "data:image/png;base64," + base64.b64encode(red).decode()
    async with Client(build_server(settings)) as client:
        uploaded = await client.call_tool("upload_file", {"path": str(folder / "blue.png")})
        blue_url = uploaded.structured_content["url"]
        combined = await client.call_tool(
            "edit_image",
            {
                "prompt": "side by side",
                "image_urls": [data_uri, blue_url],
                "model": "fal-ai/flux-2-flex/edit",
            },
        )
        wrong_mask = await client.call_tool(
            "edit_image",
            {"prompt": "a hat", "image_url": blue_url, "mask_url": str(folder / "small-mask.png")},
        )

    assert not combined.is_error, text_of(combined)
    sent = emu.jobs()[-1].input["image_urls"]
    assert sent == [data_uri, blue_url]  # a small data URI inline, fal's URL as it is
    assert combined.structured_content["cost_usd"] == pytest.approx(0.15)  # 1 MP out + 2 MP in, both read
    assert wrong_mask.is_error and "image_url is 640x480" in text_of(wrong_mask)  # fal's URL was measured
    assert len(emu.jobs()) == 1
