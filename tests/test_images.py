"""Saved files never overwrite anything and say what they are; previews always fit the result budget."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from PIL import Image

from fal_flux_mcp.server._files import save_image
from fal_flux_mcp.server._images import (
    RESULT_LIMIT_BYTES,
    Preview,
    image_dimensions,
    make_preview,
    make_preview_async,
    preview_budget,
    sniff_content_type,
)

ULTRA = "fal-ai/flux-pro/v1.1-ultra"
WHEN = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)
PORTABLE_NAME = re.compile(r"^\d{8}-\d{6}_[a-z0-9-]{1,40}_[a-z0-9.-]+_(\d+|noseed)_\d+(-\d+)?\.[a-z]+$")


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Detail everywhere, coarse enough to survive downscaling: about the hardest content to compress."""
    coarse = (max(1, width // 3), max(1, height // 3))
    noise = Image.effect_noise(coarse, 60 + seed).resize((width, height), Image.Resampling.NEAREST)
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (noise, gradient, noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


@pytest.fixture(scope="module")
def ultra_jpeg() -> bytes:
    return encode(photo(2752, 1536), quality=95)


def save(data: bytes, output_dir: Path, **overrides: object) -> Path:
    arguments: dict[str, object] = {
        "output_dir": output_dir,
        "job_id": "req-123",
        "index": 0,
        "prompt": "A red fox in the snow",
        "endpoint_id": ULTRA,
        "seed": 42,
        "content_type": "image/jpeg",
        "created_at": WHEN,
    }
    arguments.update(overrides)
    return save_image(data, **arguments)  # type: ignore[arg-type]


# --- saving ---------------------------------------------------------------------------------------------


def test_file_name_says_when_what_which_model_and_seed(tmp_path: Path) -> None:
    path = save(encode(photo(64, 48)), tmp_path, index=1)
    stamp = WHEN.astimezone().strftime("%Y%m%d-%H%M%S")
    assert path.name == f"{stamp}_a-red-fox-in-the-snow_flux-pro-v1.1-ultra_42_1.jpg"
    assert path.is_absolute()
    assert path.parent == tmp_path


def test_saving_the_same_image_twice_keeps_both(tmp_path: Path) -> None:
    first_data, second_data = encode(photo(64, 48, 1)), encode(photo(64, 48, 2))
    first = save(first_data, tmp_path)
    second = save(second_data, tmp_path)
    assert first != second
    assert second.name == first.name.replace(".jpg", "-1.jpg")
    assert first.read_bytes() == first_data
    assert second.read_bytes() == second_data


def test_a_users_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    data = encode(photo(64, 48))
    taken = save(data, tmp_path)
    taken.write_bytes(b"the user's edited version")
    path = save(data, tmp_path)
    assert taken.read_bytes() == b"the user's edited version"
    assert path.read_bytes() == data


def test_concurrent_saves_of_one_name_all_survive(tmp_path: Path) -> None:
    base = encode(photo(64, 48))
    payloads = [base + bytes([n]) for n in range(16)]  # trailing bytes keep them JPEGs but tell them apart
    start = threading.Barrier(len(payloads))

    def worker(payload: bytes) -> Path:  # sixteen jobs whose images get the same name
        start.wait()
        return save(payload, tmp_path, job_id=f"req-{payload[-1]}")

    with ThreadPoolExecutor(len(payloads)) as pool:
        paths = list(pool.map(worker, payloads))
    assert len(set(paths)) == len(payloads)
    assert sorted(path.read_bytes() for path in paths) == sorted(payloads)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left


def test_saving_an_image_again_reuses_its_file(tmp_path: Path) -> None:
    """A crash after saving but before the journal recorded it must not leave a second copy."""
    data = encode(photo(64, 48))
    first = save(data, tmp_path)
    again = save(data, tmp_path)
    assert again == first
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_a_part_file_left_by_a_crash_mid_write_is_replaced_by_the_next_save(tmp_path: Path) -> None:
    data = encode(photo(64, 48))
    stem = save(data, tmp_path, job_id="another-job").stem  # the name this image gets
    (tmp_path / f"{stem}.jpg").unlink()
    # What a SIGKILL mid-write leaves: half the bytes under the hidden name save_image uses for this
    # job's image (a hash of the job id and the index).
    token = hashlib.sha256(b"req-123\x000").hexdigest()[:16]
    leftover = tmp_path / f".{stem[:60]}.{token}.part"
    leftover.write_bytes(data[: len(data) // 2])
    saved = save(data, tmp_path)
    assert saved.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == [saved.name]


@pytest.mark.parametrize(
    "prompt",
    [
        "../../etc/passwd",
        "..",
        'a/b\\c:d*e?f"g<h>i|j',
        "猫の写真、夕焼け",
        "Crème brûlée on a café table",
        "CON",
        "x" * 500,
        "",
        "word " * 100,
    ],
)
def test_names_stay_portable_and_inside_the_output_folder(tmp_path: Path, prompt: str) -> None:
    path = save(encode(photo(32, 32)), tmp_path, prompt=prompt, seed=None)
    assert path.parent == tmp_path
    assert PORTABLE_NAME.match(path.name), path.name
    assert len(path.name) <= 120


def test_accented_prompts_keep_their_letters(tmp_path: Path) -> None:
    path = save(encode(photo(32, 32)), tmp_path, prompt="Crème brûlée")
    assert "_creme-brulee_" in path.name


def test_long_prompts_are_cut_at_a_word(tmp_path: Path) -> None:
    prompt = "an extraordinarily detailed watercolor painting of a lighthouse at dawn"
    slug = save(encode(photo(32, 32)), tmp_path, prompt=prompt).name.split("_")[1]
    assert len(slug) <= 40
    assert prompt.replace(" ", "-").startswith(slug)
    assert not slug.endswith("-")


def test_extension_follows_the_bytes_not_the_label(tmp_path: Path) -> None:
    png = encode(photo(32, 32), "PNG")
    assert save(png, tmp_path, content_type="image/jpeg").suffix == ".png"
    assert save(b"opaque bytes", tmp_path, content_type="image/webp").suffix == ".webp"
    assert save(b"opaque bytes", tmp_path, content_type="application/octet-stream").suffix == ".bin"


def test_missing_output_folders_are_created(tmp_path: Path) -> None:
    path = save(encode(photo(32, 32)), tmp_path / "a" / "b")
    assert path.parent == tmp_path / "a" / "b"


def test_relative_output_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        save(encode(photo(32, 32)), Path("generated_imgs"))


def test_empty_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        save(b"", tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- previews -------------------------------------------------------------------------------------------


def decoded(preview: Preview) -> Image.Image:
    image = Image.open(io.BytesIO(preview.data))
    assert image.format == "JPEG"
    assert image.size == (preview.width, preview.height)
    return image


def test_ultra_image_preview_fits_the_single_image_budget(ultra_jpeg: bytes) -> None:
    budget = preview_budget(1)
    preview = make_preview(ultra_jpeg, max_bytes=budget)
    decoded(preview)
    assert len(preview.data) <= budget
    assert preview.mime_type == "image/jpeg"
    assert max(preview.width, preview.height) == 1024
    assert preview.width / preview.height == pytest.approx(2752 / 1536, rel=0.01)


def test_four_ultra_previews_fit_in_one_tool_result() -> None:
    sizes = [(2752, 1536), (1536, 2752), (2048, 2048), (3136, 1344)]
    budget = preview_budget(len(sizes))
    previews = [
        make_preview(encode(photo(w, h, n), quality=95), max_bytes=budget) for n, (w, h) in enumerate(sizes)
    ]
    base64_chars = sum(len(base64.b64encode(p.data)) for p in previews)
    assert all(len(p.data) <= budget for p in previews)
    assert base64_chars + 100_000 < RESULT_LIMIT_BYTES  # room left for the rest of the result
    for preview, (w, h) in zip(previews, sizes, strict=True):
        assert max(preview.width, preview.height) <= 1024
        assert preview.width / preview.height == pytest.approx(w / h, rel=0.02)


def test_a_tight_budget_shrinks_the_image_but_keeps_its_shape(ultra_jpeg: bytes) -> None:
    preview = make_preview(ultra_jpeg, max_bytes=25_000)
    decoded(preview)
    assert len(preview.data) <= 25_000
    assert max(preview.width, preview.height) < 1024
    assert preview.width / preview.height == pytest.approx(2752 / 1536, rel=0.02)


def test_small_images_are_not_upscaled() -> None:
    preview = make_preview(encode(photo(300, 200)), max_bytes=preview_budget(1))
    assert (preview.width, preview.height) == (300, 200)


def test_max_edge_is_respected() -> None:
    preview = make_preview(encode(photo(3000, 1000)), max_edge=512, max_bytes=preview_budget(1))
    assert (preview.width, preview.height) == (512, 171)


def test_transparency_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 100, 100))
    preview = decoded(make_preview(encode(image, "PNG"), max_bytes=50_000))
    assert preview.mode == "RGB"
    red, green, blue = preview.getpixel((150, 50))
    assert min(red, green, blue) > 240  # the transparent half is white, not black
    red, green, blue = preview.getpixel((50, 50))
    assert blue > 200 and red < 40 and green < 40


def test_palette_transparency_is_flattened_onto_white() -> None:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.paste(1, (0, 0, 32, 64))
    image.info["transparency"] = 0
    preview = decoded(make_preview(encode(image, "PNG", transparency=0), max_bytes=50_000))
    assert min(preview.getpixel((48, 32))) > 240
    assert preview.getpixel((16, 32))[0] > 200


def test_exif_rotation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    data = encode(photo(400, 200), exif=exif.tobytes())
    preview = make_preview(data, max_bytes=preview_budget(1))
    assert (preview.width, preview.height) == (200, 400)
    assert image_dimensions(data) == (200, 400, "image/jpeg")


def test_preview_of_non_image_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not an image"):
        make_preview(b"<html>error page</html>", max_bytes=100_000)


def test_impossible_budget_is_a_clear_error(ultra_jpeg: bytes) -> None:
    with pytest.raises(ValueError, match="cannot fit"):
        make_preview(ultra_jpeg, max_bytes=100)


def test_preview_can_run_off_the_event_loop(ultra_jpeg: bytes) -> None:
    async def main() -> Preview:
        return await make_preview_async(ultra_jpeg, max_edge=256, max_bytes=50_000)

    preview = anyio.run(main)
    assert max(preview.width, preview.height) == 256


def test_preview_budget_splits_the_room_under_one_megabyte() -> None:
    assert preview_budget(1) == 700_000
    assert preview_budget(4) == 175_000
    assert 4 * len(base64.b64encode(b"x" * preview_budget(4))) < RESULT_LIMIT_BYTES - 100_000
    with pytest.raises(ValueError):
        preview_budget(0)
    with pytest.raises(ValueError):
        preview_budget(1, total_bytes=800_000)  # base64 alone would pass 1 MB


# --- identifying images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_dimensions_and_type_come_from_the_header(fmt: str, content_type: str) -> None:
    data = encode(photo(320, 240), fmt)
    assert image_dimensions(data) == (320, 240, content_type)
    assert sniff_content_type(data) == content_type


def test_avif_is_recognised_by_its_brand_and_heic_is_not() -> None:
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"
    avif_compatible = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf"
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    assert sniff_content_type(avif) == "image/avif"
    assert sniff_content_type(avif_compatible) == "image/avif"
    assert sniff_content_type(heic) is None
    assert sniff_content_type(b"hello, this is text") is None


def test_dimensions_of_non_image_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not an image"):
        image_dimensions(b"not an image at all")
