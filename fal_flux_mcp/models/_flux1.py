"""fal's FLUX.1 / FLUX1.1 endpoints: [pro] ultra, [pro], Redux, Kontext, Fill, [dev] and [schnell]."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fal_flux_mcp.models._common import (
    Acceleration,
    AspectField,
    EditPrompt,
    EnhancePrompt,
    FalInput,
    Format,
    Guidance,
    ImagePromptStrength,
    ImageUrl,
    ImageUrls,
    MaskUrl,
    NumImages,
    OptionalAspect,
    OptionalPrompt,
    Prompt,
    SafetyChecker,
    Seed,
    SizeField,
    Steps,
    SyncMode,
    Tolerance,
)

Raw = Annotated[bool, Field(description="Less processed, more natural-looking output.")]


class _ProBase(FalInput):
    seed: Seed = None
    sync_mode: SyncMode = False
    num_images: NumImages = 1
    output_format: Format = "jpeg"
    safety_tolerance: Tolerance = "2"
    enhance_prompt: EnhancePrompt = False


class FluxProUltraInput(_ProBase):
    """``fal-ai/flux-pro/v1.1-ultra``: text to image at about 4 megapixels, sized by aspect ratio."""

    prompt: Prompt
    aspect_ratio: AspectField = "16:9"
    raw: Raw = False
    image_url: Annotated[str | None, Field(description="Optional image prompt (URL).")] = None
    image_prompt_strength: ImagePromptStrength = 0.1
    enable_safety_checker: SafetyChecker = True


class FluxProUltraFinetunedInput(_ProBase):
    """``fal-ai/flux-pro/v1.1-ultra-finetuned``: ultra with the user's own fine-tune (``finetune_id``).

    fal's page marks ``finetune_strength`` required and gives no default.
    """

    prompt: Prompt
    image_url: Annotated[str | None, Field(description="Optional image prompt (URL).")] = None
    image_prompt_strength: ImagePromptStrength = 0.1
    aspect_ratio: AspectField = "16:9"
    raw: Raw = False
    finetune_id: Annotated[str, Field(description="The id of your fine-tuned model on fal.")]
    finetune_strength: Annotated[
        float, Field(ge=0, le=2, description="How strongly the fine-tune steers the result (0-2).")
    ]


class FluxProUltraReduxInput(_ProBase):
    """``fal-ai/flux-pro/v1.1-ultra/redux``: variations of an image at ultra resolution."""

    image_url: ImageUrl
    prompt: OptionalPrompt = ""
    aspect_ratio: AspectField = "16:9"
    raw: Raw = False
    image_prompt_strength: ImagePromptStrength = 0.1
    enable_safety_checker: SafetyChecker = True


class FluxProV11Input(_ProBase):
    """``fal-ai/flux-pro/v1.1``: text to image, sized by ``image_size``."""

    prompt: Prompt
    image_size: SizeField = "landscape_4_3"


class FluxProReduxInput(_ProBase):
    """``fal-ai/flux-pro/v1.1/redux`` and ``fal-ai/flux-pro/v1/redux``: variations of an image."""

    image_url: ImageUrl
    prompt: OptionalPrompt = ""
    image_size: SizeField = "landscape_4_3"
    num_inference_steps: Steps = 28
    guidance_scale: Guidance = 3.5


class FluxKontextInput(_ProBase):
    """``fal-ai/flux-pro/kontext`` and ``.../kontext/max``: edit an image by instruction."""

    prompt: EditPrompt
    image_url: ImageUrl
    guidance_scale: Guidance = 3.5
    aspect_ratio: OptionalAspect = None


class FluxKontextMultiInput(_ProBase):
    """``fal-ai/flux-pro/kontext/multi`` and ``.../kontext/max/multi``: edit or combine several images."""

    prompt: EditPrompt
    image_urls: ImageUrls
    guidance_scale: Guidance = 3.5
    aspect_ratio: OptionalAspect = None


class FluxProFillInput(_ProBase):
    """``fal-ai/flux-pro/v1/fill``: repaint the masked part of an image; image and mask of one size."""

    prompt: Annotated[str, Field(description="What to paint in the masked part of the image.")]
    image_url: ImageUrl
    mask_url: MaskUrl


class FluxDevInput(FalInput):
    """``fal-ai/flux/dev``: the open-weights 12B model, text to image."""

    prompt: Prompt
    image_size: SizeField = "landscape_4_3"
    num_inference_steps: Steps = 28
    seed: Seed = None
    guidance_scale: Guidance = 3.5
    sync_mode: SyncMode = False
    num_images: NumImages = 1
    enable_safety_checker: SafetyChecker = True
    output_format: Format = "jpeg"
    acceleration: Annotated[Acceleration, Field(description="Speed/quality trade-off.")] = "none"


class FluxSchnellInput(FluxDevInput):
    """``fal-ai/flux/schnell``: the fast distilled model, 1-12 steps."""

    num_inference_steps: Annotated[
        int, Field(ge=1, le=12, description="Number of inference steps (1-12).")
    ] = 4
