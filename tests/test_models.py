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


# ----------------------------------------------------------------------------------------- FLUX.2 & co


def _input(endpoint_id: str, arguments: dict) -> object:
    return get_model(endpoint_id).input_model.model_validate(arguments)


@pytest.mark.parametrize(
    ("endpoint_id", "arguments", "input_sizes", "expected"),
    [
        # $0.03 the first megapixel of output, $0.015 each further megapixel of input and output.
        ("fal-ai/flux-2-pro", {"prompt": "x", "image_size": "square_hd"}, [], 0.03),
        # fal's own example: 1920x1080 costs $0.045.
        ("fal-ai/flux-2-pro", {"prompt": "x", "image_size": {"width": 1920, "height": 1080}}, [], 0.045),
        ("fal-ai/flux-2-pro/edit", {"prompt": "x", "image_urls": ["u"]}, [(1024, 1024)], 0.045),
        ("fal-ai/flux-2-pro/edit", {"prompt": "x", "image_urls": ["u", "v"]}, [(512, 512), (512, 512)], 0.06),
        # $0.05 per megapixel on the input and the output side.
        ("fal-ai/flux-2-flex", {"prompt": "x", "image_size": "landscape_4_3"}, [], 0.05),
        ("fal-ai/flux-2-flex/edit", {"prompt": "x", "image_urls": ["u"]}, [(1024, 1024)], 0.10),
        # $0.07 the first processed megapixel, $0.03 each further one, inputs included.
        ("fal-ai/flux-2-max/edit", {"prompt": "x", "image_urls": ["u"]}, [(1024, 1024)], 0.10),
        ("fal-ai/flux-2/flash", {"prompt": "x", "num_images": 2}, [], 0.01),
        ("fal-ai/flux-pro/kontext/max", {"prompt": "x", "image_url": "u", "num_images": 2}, [], 0.16),
        ("fal-ai/flux-pro/kontext/multi", {"prompt": "x", "image_urls": ["u", "v"]}, [], 0.04),
        ("fal-ai/flux-pro/kontext/max/multi", {"prompt": "x", "image_urls": ["u", "v"]}, [], 0.08),
        # Fill: $0.05 per output megapixel; the output is the input image's size.
        (
            "fal-ai/flux-pro/v1/fill",
            {"prompt": "x", "image_url": "u", "mask_url": "m"},
            [(2048, 1024)] * 2,
            0.10,
        ),
    ],
)
def test_new_models_follow_fals_price_models(
    endpoint_id: str, arguments: dict, input_sizes: list, expected: float
) -> None:
    model = get_model(endpoint_id)
    estimate = model.estimate_cost(model.input_model.model_validate(arguments), input_sizes=input_sizes)
    assert estimate == pytest.approx(expected)


def test_flux_2_pro_takes_no_num_images_and_safety_tolerance_stops_at_5() -> None:
    with pytest.raises(ValueError, match="num_images"):
        _input("fal-ai/flux-2-pro", {"prompt": "x", "num_images": 2})
    with pytest.raises(ValueError, match="safety_tolerance"):
        _input("fal-ai/flux-2-pro", {"prompt": "x", "safety_tolerance": "6"})
    assert _input("fal-ai/flux-pro/kontext/max", {"prompt": "x", "image_url": "u", "safety_tolerance": "6"})


def test_flash_has_no_safety_tolerance_and_keeps_sizes_within_512_to_2048() -> None:
    with pytest.raises(ValueError, match="safety_tolerance"):
        _input("fal-ai/flux-2/flash", {"prompt": "x", "safety_tolerance": "2"})
    with pytest.raises(ValueError, match="width"):
        _input("fal-ai/flux-2/flash", {"prompt": "x", "image_size": {"width": 256, "height": 512}})
    assert _input("fal-ai/flux-2/flash", {"prompt": "x"}).output_format == "png"  # type: ignore[attr-defined]


def test_required_inputs_of_edit_fill_and_finetuned_models() -> None:
    assert get_model("fal-ai/flux-pro/v1/fill").required_inputs == ["image_url", "mask_url"]
    assert get_model("fal-ai/flux-2-max/edit").required_inputs == ["image_urls"]
    assert get_model("fal-ai/flux-pro/v1.1-ultra-finetuned").required_inputs == [
        "finetune_id",
        "finetune_strength",
    ]
    with pytest.raises(ValueError, match="finetune_strength"):
        _input(
            "fal-ai/flux-pro/v1.1-ultra-finetuned",
            {"prompt": "x", "finetune_id": "f", "finetune_strength": 3},
        )


def test_edit_outputs_follow_their_inputs() -> None:
    edit = _input("fal-ai/flux-2-pro/edit", {"prompt": "x", "image_urls": ["u"]})
    assert output_size("fal-ai/flux-2-pro/edit", edit, [(800, 600)]) == (800, 600)  # type: ignore[arg-type]
    big = output_size("fal-ai/flux-2-pro/edit", edit, [(4000, 3000)])  # type: ignore[arg-type]
    assert big[0] * big[1] <= 4 * 1024 * 1024 and big[0] / big[1] == pytest.approx(4 / 3, rel=0.02)
    fill = _input("fal-ai/flux-pro/v1/fill", {"prompt": "x", "image_url": "u", "mask_url": "m"})
    assert output_size("fal-ai/flux-pro/v1/fill", fill, [(640, 480), (640, 480)]) == (640, 480)  # type: ignore[arg-type]
    kontext = _input("fal-ai/flux-pro/kontext", {"prompt": "x", "image_url": "u"})
    width, height = output_size("fal-ai/flux-pro/kontext", kontext, [(1600, 900)])  # type: ignore[arg-type]
    assert width / height == pytest.approx(16 / 9, rel=0.03)


def test_the_finetuned_model_has_no_list_price() -> None:
    model = get_model("fal-ai/flux-pro/v1.1-ultra-finetuned")
    assert model.price_usd is None
    arguments = _input(model.endpoint_id, {"prompt": "x", "finetune_id": "f", "finetune_strength": 1})
    assert model.estimate_cost(arguments, unit_price=0.07) == pytest.approx(0.07)  # type: ignore[arg-type]
