"""A paid image is never left unsaved because of a passing failure.

The output folder is made unusable by putting a plain file where a folder must be (the tests run as
root in CI, where permission bits would not stop a write). The job still answers with its preview,
says why the file is not saved and where it will go, and the save is retried: by ``check_status``,
in the background, and at the next server start.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings
from tests.samples import saved_images

pytestmark = pytest.mark.anyio

SCHNELL = {"prompt": "a fox in the snow", "model": "fal-ai/flux/schnell"}


def _block(folder: Path) -> Path:
    """Make ``folder`` impossible to create: its parent is a plain file."""
    blocker = folder.parent
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    return blocker


@pytest.fixture
def unwritable(settings: Settings, tmp_path: Path) -> Settings:
    """Settings whose output folder cannot be written until the test removes the blocker file."""
    return settings.model_copy(update={"output_dir": tmp_path / "blocked" / "out"})


async def test_an_unsaved_image_still_shows_its_preview_and_says_why_and_where(
    unwritable: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    _block(unwritable.output_dir)
    _block(unwritable.state_dir / "previews" / "x")  # no preview file either: it must come from memory
    async with Client(build_server(unwritable)) as client:
        result = await client.call_tool("generate_image", SCHNELL)
    assert not result.is_error
    (image,) = result.structured_content["images"]
    assert image["path"] is None and image["save_state"] == "pending" and image["save_error"]
    message = result.structured_content["message"]
    assert str(unwritable.output_dir) in message and "not saved yet" in message
    assert [block.type for block in result.content].count("image") == 1


async def test_check_status_saves_the_image_once_the_folder_works(
    unwritable: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    blocker = _block(unwritable.output_dir)
    async with Client(build_server(unwritable)) as client:
        first = await client.call_tool("generate_image", SCHNELL)
        job_id = first.structured_content["job_id"]
        blocker.unlink()
        again = await client.call_tool("check_status", {"job_id": job_id})
    (image,) = again.structured_content["images"]
    assert image["save_state"] == "saved" and Path(image["path"]).is_file()
    assert Path(image["path"]).parent == unwritable.output_dir
    assert "not saved yet" not in again.structured_content["message"]


async def test_the_server_keeps_trying_in_the_background(unwritable: Settings, emulator: Emulator) -> None:
    emulator.config.job_seconds = 0.05
    blocker = _block(unwritable.output_dir)
    async with Client(build_server(unwritable)) as client:
        await client.call_tool("generate_image", SCHNELL)
        blocker.unlink()
        (saved,) = await saved_images(unwritable.output_dir, 10)
    assert saved.stat().st_size > 0


async def test_the_next_server_start_saves_what_the_last_run_could_not(
    unwritable: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    blocker = _block(unwritable.output_dir)
    async with Client(build_server(unwritable)) as client:
        result = await client.call_tool("generate_image", SCHNELL)
    assert result.structured_content["images"][0]["save_state"] == "pending"
    blocker.unlink()
    async with Client(build_server(unwritable)) as client:
        (saved,) = await saved_images(unwritable.output_dir, 10)
        status = await client.call_tool("check_status", {"job_id": result.structured_content["job_id"]})
    assert status.structured_content["images"][0]["path"] == str(saved)
    assert emulator.counters["submit"] == 1
