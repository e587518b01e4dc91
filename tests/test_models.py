"""fal's endpoint models and the registry: sizes, presets and the cost a user is shown before paying."""

from __future__ import annotations

import pytest

from fal_flux_mcp.models import (
    ASPECT_RATIOS,
    ImageSize,
    image_size_for_aspect_ratio,
    output_size,
    size_for_aspect_ratio,
)
from fal_flux_mcp.registry import MODELS, get_model


@pytest.mark.parametrize("aspect_ratio", ASPECT_RATIOS)
def test_aspect_ratio_sizes_stay_within_one_megapixel_in_multiples_of_16(aspect_ratio: str) -> None:
    width, height = size_for_aspect_ratio(aspect_ratio)
    w, h = (int(p) for p in aspect_ratio.split(":"))
    assert width % 16 == 0 and height % 16 == 0
    assert width * height <= 1024 * 1024
    assert width * height > 0.9 * 1024 * 1024
    assert width / height == pytest.approx(w / h, rel=0.03)


def test_standard_ratios_use_fal_presets() -> None:
    assert image_size_for_aspect_ratio("1:1") == "square_hd"
    assert image_size_for_aspect_ratio("16:9") == "landscape_16_9"
    assert image_size_for_aspect_ratio("3:4") == "portrait_4_3"
    assert isinstance(image_size_for_aspect_ratio("21:9"), ImageSize)


@pytest.mark.parametrize(
    ("endpoint_id", "arguments", "expected"),
    [
        ("fal-ai/flux-pro/v1.1-ultra", {"prompt": "x", "num_images": 3}, 0.18),
        ("fal-ai/flux-pro/v1.1", {"prompt": "x"}, 0.04),  # landscape_4_3, under 1 MP
        ("fal-ai/flux-pro/v1.1", {"prompt": "x", "image_size": {"width": 2048, "height": 1024}}, 0.08),
        ("fal-ai/flux-pro/v1.1", {"prompt": "x", "image_size": image_size_for_aspect_ratio("21:9")}, 0.04),
        ("fal-ai/flux/dev", {"prompt": "x", "num_images": 2}, 0.05),
        ("fal-ai/flux/schnell", {"prompt": "x", "image_size": "square_hd"}, 0.003),
        ("fal-ai/flux-pro/kontext", {"prompt": "x", "image_url": "https://a/b.png", "num_images": 4}, 0.16),
    ],
)
def test_cost_estimates_follow_fal_price_models(endpoint_id: str, arguments: dict, expected: float) -> None:
    model = get_model(endpoint_id)
    assert model.estimate_cost(model.input_model.model_validate(arguments)) == pytest.approx(expected)


def test_ultra_renders_about_four_megapixels() -> None:
    model = MODELS["fal-ai/flux-pro/v1.1-ultra"].input_model
    for aspect_ratio in ASPECT_RATIOS:
        width, height = output_size(
            "fal-ai/flux-pro/v1.1-ultra", model(prompt="x", aspect_ratio=aspect_ratio)
        )
        assert 3.9e6 < width * height < 4.3e6


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="fal-ai/flux/dev"):
        get_model("fal-ai/flux-pro/v2")


def test_inputs_reject_unknown_fields_and_numeric_safety_tolerance() -> None:
    model = MODELS["fal-ai/flux-pro/v1.1"].input_model
    with pytest.raises(ValueError, match="aspect_ratio"):
        model.model_validate({"prompt": "x", "aspect_ratio": "1:1"})
    with pytest.raises(ValueError, match="safety_tolerance"):
        model.model_validate({"prompt": "x", "safety_tolerance": 2})
