"""fal's FLUX.2 endpoints: [pro], [flex], [max] editing and [flash].

FLUX.2 [pro] and [max] have no steps, guidance or ``num_images`` (one image per call), and their
``safety_tolerance`` stops at "5"; [flex] adds steps and guidance with their own bounds; [flash] has no
``safety_tolerance`` at all, renders PNG by default and takes WebP. The edit endpoints take a list of
input images, ``image_urls``, and size their output from them by default (``image_size`` "auto").
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from fal_flux_mcp.models._common import (
    EditPrompt,
    EditSizeField,
    FalInput,
    Flux2Tolerance,
    Format,
    ImageSizePreset,
    ImageUrls,
    NumImages,
    Prompt,
    SafetyChecker,
    Seed,
    SizeField,
    SyncMode,
)

FlexGuidance = Annotated[
    float, Field(ge=1.5, le=10, description="How closely to follow the prompt (1.5-10).")
]
FlexSteps = Annotated[int, Field(ge=2, le=50, description="Number of inference steps (2-50).")]


class _Flux2Base(FalInput):
    seed: Seed = None
    safety_tolerance: Flux2Tolerance = "2"
    enable_safety_checker: SafetyChecker = True
    output_format: Format = "jpeg"
    sync_mode: SyncMode = False


class Flux2ProInput(_Flux2Base):
    """``fal-ai/flux-2-pro``: text to image with FLUX.2 [pro], sized by ``image_size``."""

    prompt: Prompt
    image_size: SizeField = "landscape_4_3"


class Flux2EditInput(_Flux2Base):
    """``fal-ai/flux-2-pro/edit`` and ``fal-ai/flux-2-max/edit``: edit or combine the ``image_urls``."""

    prompt: EditPrompt
    image_urls: ImageUrls
    image_size: EditSizeField = "auto"


class Flux2FlexInput(Flux2ProInput):
    """``fal-ai/flux-2-flex``: FLUX.2 [flex], text to image with tunable steps and guidance."""

    guidance_scale: FlexGuidance = 3.5
    num_inference_steps: FlexSteps = 28


class Flux2FlexEditInput(Flux2EditInput):
    """``fal-ai/flux-2-flex/edit``: FLUX.2 [flex] editing with tunable steps and guidance."""

    guidance_scale: FlexGuidance = 3.5
    num_inference_steps: FlexSteps = 28


class FlashImageSize(BaseModel):
    """An explicit size for FLUX.2 [flash]: each side between 512 and 2048 pixels (fal's bound)."""

    model_config = ConfigDict(extra="forbid")

    width: Annotated[int, Field(ge=512, le=2048, description="Width in pixels (512-2048).")] = 1024
    height: Annotated[int, Field(ge=512, le=2048, description="Height in pixels (512-2048).")] = 768


class Flux2FlashInput(FalInput):
    """``fal-ai/flux-2/flash``: FLUX.2 [dev] distilled for speed; PNG by default, no safety_tolerance."""

    prompt: Prompt
    guidance_scale: Annotated[
        float, Field(ge=0, le=20, description="How closely to follow the prompt (0-20).")
    ] = 2.5
    seed: Seed = None
    image_size: Annotated[
        ImageSizePreset | FlashImageSize,
        Field(description="Output size: a preset name or an explicit {width, height}, 512-2048 each."),
    ] = "landscape_4_3"
    num_images: NumImages = 1
    enable_prompt_expansion: Annotated[
        bool, Field(description="Let the model expand the prompt for better results.")
    ] = False
    sync_mode: SyncMode = False
    enable_safety_checker: SafetyChecker = True
    output_format: Annotated[
        Literal["jpeg", "png", "webp"], Field(description="File format of the generated images.")
    ] = "png"
