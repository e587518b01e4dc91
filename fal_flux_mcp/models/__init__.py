"""Pydantic models of fal's FLUX endpoints: the inputs they accept and the output they return.

These are the single source of truth for what a fal endpoint takes. The client validates a request
with them before it is sent (so a bad value costs nothing), the emulator validates with the very same
models (so it rejects what fal rejects), and the MCP layer derives its checks from them.

Field names, defaults, enums and bounds follow fal's published schemas (each model's API page on
fal.ai); ``_flux1`` holds the FLUX.1 family, ``_flux2`` FLUX.2, ``_common`` what they share.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from fal_flux_mcp.models._common import (
    ASPECT_RATIOS,
    IMAGE_SIZE_PRESETS,
    PRESET_PIXELS,
    ULTRA_PIXELS,
    AspectRatio,
    EditImageSizePreset,
    FalImage,
    FalInput,
    Flux2SafetyTolerance,
    FluxOutput,
    ImageSize,
    ImageSizePreset,
    OutputFormat,
    SafetyTolerance,
    image_size_for_aspect_ratio,
    size_for_aspect_ratio,
    size_like,
)
from fal_flux_mcp.models._flux1 import (
    FluxDevInput,
    FluxKontextInput,
    FluxKontextMultiInput,
    FluxProFillInput,
    FluxProReduxInput,
    FluxProUltraFinetunedInput,
    FluxProUltraInput,
    FluxProUltraReduxInput,
    FluxProV11Input,
    FluxSchnellInput,
)
from fal_flux_mcp.models._flux2 import (
    FlashImageSize,
    Flux2EditInput,
    Flux2FlashInput,
    Flux2FlexEditInput,
    Flux2FlexInput,
    Flux2ProInput,
)

__all__ = [
    "ASPECT_RATIOS",
    "IMAGE_SIZE_PRESETS",
    "INPUT_MODELS",
    "PRESET_PIXELS",
    "ULTRA_PIXELS",
    "AspectRatio",
    "EditImageSizePreset",
    "FalImage",
    "FalInput",
    "FlashImageSize",
    "Flux2EditInput",
    "Flux2FlashInput",
    "Flux2FlexEditInput",
    "Flux2FlexInput",
    "Flux2ProInput",
    "Flux2SafetyTolerance",
    "FluxDevInput",
    "FluxKontextInput",
    "FluxKontextMultiInput",
    "FluxOutput",
    "FluxProFillInput",
    "FluxProReduxInput",
    "FluxProUltraFinetunedInput",
    "FluxProUltraInput",
    "FluxProUltraReduxInput",
    "FluxProV11Input",
    "FluxSchnellInput",
    "ImageSize",
    "ImageSizePreset",
    "OutputFormat",
    "SafetyTolerance",
    "field_errors",
    "image_size_for_aspect_ratio",
    "input_image_urls",
    "output_size",
    "size_for_aspect_ratio",
    "size_like",
]

INPUT_MODELS: dict[str, type[FalInput]] = {
    "fal-ai/flux-pro/v1.1-ultra": FluxProUltraInput,
    "fal-ai/flux-pro/v1.1-ultra/redux": FluxProUltraReduxInput,
    "fal-ai/flux-pro/v1.1-ultra-finetuned": FluxProUltraFinetunedInput,
    "fal-ai/flux-pro/v1.1": FluxProV11Input,
    "fal-ai/flux-pro/v1.1/redux": FluxProReduxInput,
    "fal-ai/flux-pro/v1/redux": FluxProReduxInput,
    "fal-ai/flux-pro/kontext": FluxKontextInput,
    "fal-ai/flux-pro/kontext/max": FluxKontextInput,
    "fal-ai/flux-pro/kontext/multi": FluxKontextMultiInput,
    "fal-ai/flux-pro/kontext/max/multi": FluxKontextMultiInput,
    "fal-ai/flux-pro/v1/fill": FluxProFillInput,
    "fal-ai/flux/dev": FluxDevInput,
    "fal-ai/flux/schnell": FluxSchnellInput,
    "fal-ai/flux-2-pro": Flux2ProInput,
    "fal-ai/flux-2-pro/edit": Flux2EditInput,
    "fal-ai/flux-2-flex": Flux2FlexInput,
    "fal-ai/flux-2-flex/edit": Flux2FlexEditInput,
    "fal-ai/flux-2-max/edit": Flux2EditInput,
    "fal-ai/flux-2/flash": Flux2FlashInput,
}

#: The largest output an ``auto``-sized FLUX.2 edit is given (the input is scaled down to it).
_AUTO_MAX_MEGAPIXELS = 4.0


def field_errors(exc: PydanticValidationError, *, include_input: bool = False) -> list[dict[str, Any]]:
    """A validation failure as fal reports it: FastAPI's 422 ``detail`` entries, under ``loc: ["body", ...]``.

    Shared by the client's pre-check and the emulator, so both describe a bad field the same way.
    """
    errors: list[dict[str, Any]] = json.loads(exc.json(include_url=False, include_input=include_input))
    for error in errors:
        error["loc"] = ["body", *error.get("loc", [])]
    return errors


def input_image_urls(arguments: FalInput) -> list[str]:
    """The input images an endpoint works on, in order: ``image_urls``, else ``image_url``, then the mask.

    An ultra's optional image prompt is an input image too.
    """
    urls = list(getattr(arguments, "image_urls", None) or [])
    image_url = getattr(arguments, "image_url", None)
    if image_url:
        urls.append(image_url)
    mask_url = getattr(arguments, "mask_url", None)
    if mask_url:
        urls.append(mask_url)
    return urls


def output_size(
    endpoint_id: str, arguments: FalInput, input_sizes: Sequence[tuple[int, int]] = ()
) -> tuple[int, int]:
    """The (width, height) an endpoint renders for ``arguments``: what the cost and the emulator rest on.

    ``input_sizes`` are the sizes of the input images (``input_image_urls`` order), where known: an edit
    sized "auto" follows its first input, Fill keeps its image's size, and Kontext without an aspect
    ratio keeps the input's proportions. Unknown, they are taken as square.
    """
    aspect_ratio = getattr(arguments, "aspect_ratio", None)
    first = input_sizes[0] if input_sizes else None
    if endpoint_id.startswith("fal-ai/flux-pro/v1.1-ultra"):
        return ULTRA_PIXELS[aspect_ratio or "16:9"]
    if isinstance(arguments, FluxProFillInput):
        return first or (1024, 1024)
    image_size = getattr(arguments, "image_size", None)
    if isinstance(image_size, ImageSize | FlashImageSize):
        return image_size.width, image_size.height
    if image_size == "auto":
        if first is None:
            return 1024, 1024
        width, height = first
        if width * height <= _AUTO_MAX_MEGAPIXELS * 1024 * 1024:
            return width, height
        return size_like(width, height, _AUTO_MAX_MEGAPIXELS)
    if isinstance(image_size, str):
        return PRESET_PIXELS[image_size]
    if aspect_ratio is None and first is not None:
        return size_like(*first)
    return size_for_aspect_ratio(aspect_ratio or "1:1")
