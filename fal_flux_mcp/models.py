"""Pydantic models of fal's FLUX endpoints: the inputs they accept and the output they return.

These are the single source of truth for what a fal endpoint takes. The client validates a request
with them before it is sent (so a bad value costs nothing), the emulator validates with the very same
models (so it rejects what fal rejects), and the MCP layer derives its checks from them.

Field names, defaults, enums and bounds follow fal's published schemas (each model's API page on
fal.ai). Input models forbid unknown fields: whether fal ignores or rejects them is not known, and
a field silently dropped is a parameter the user believes they set.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

AspectRatio: TypeAlias = Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
ImageSizePreset: TypeAlias = Literal[
    "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]
OutputFormat: TypeAlias = Literal["jpeg", "png"]
SafetyTolerance: TypeAlias = Literal["1", "2", "3", "4", "5", "6"]
Acceleration: TypeAlias = Literal["none", "regular", "high"]

ASPECT_RATIOS: tuple[str, ...] = AspectRatio.__args__  # type: ignore[attr-defined]
IMAGE_SIZE_PRESETS: tuple[str, ...] = ImageSizePreset.__args__  # type: ignore[attr-defined]

#: Pixel sizes (width, height) of fal's ``image_size`` presets.
PRESET_PIXELS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

#: FLUX1.1 [pro] ultra renders about 4 megapixels; these are its sizes for each aspect ratio.
ULTRA_PIXELS: dict[str, tuple[int, int]] = {
    "21:9": (3136, 1344),
    "16:9": (2752, 1536),
    "4:3": (2368, 1792),
    "3:2": (2496, 1664),
    "1:1": (2048, 2048),
    "2:3": (1664, 2496),
    "3:4": (1792, 2368),
    "9:16": (1536, 2752),
    "9:21": (1344, 3136),
}


class ImageSize(BaseModel):
    """An explicit output size, for the endpoints that take ``image_size``."""

    model_config = ConfigDict(extra="forbid")

    width: Annotated[int, Field(gt=0, le=14142, description="Width in pixels.")] = 512
    height: Annotated[int, Field(gt=0, le=14142, description="Height in pixels.")] = 512


def size_for_aspect_ratio(aspect_ratio: str, megapixels: float = 1.0) -> tuple[int, int]:
    """The (width, height) of at most ``megapixels`` at ``aspect_ratio``, in multiples of 16 as FLUX wants.

    Rounded down, never up: per-megapixel prices round each image up to whole megapixels, so 1,568 x 672
    (just over one) would cost twice what 1,552 x 656 does.
    """
    w_ratio, h_ratio = _parse_ratio(aspect_ratio)
    pixels = megapixels * 1024 * 1024
    height = math.sqrt(pixels * h_ratio / w_ratio)
    width = height * w_ratio / h_ratio
    return max(16, int(width // 16) * 16), max(16, int(height // 16) * 16)


def image_size_for_aspect_ratio(aspect_ratio: str) -> ImageSizePreset | ImageSize:
    """The ``image_size`` that gives ``aspect_ratio`` on endpoints sized by ``image_size``.

    A fal preset where one matches (so requests look like the ones fal's playground sends), otherwise an
    explicit size of about one megapixel.
    """
    wanted = _ratio(*_parse_ratio(aspect_ratio))
    for preset, (width, height) in PRESET_PIXELS.items():
        if preset != "square" and _ratio(width, height) == wanted:
            return preset  # type: ignore[return-value]
    width, height = size_for_aspect_ratio(aspect_ratio)
    return ImageSize(width=width, height=height)


def _parse_ratio(aspect_ratio: str) -> tuple[int, int]:
    w, h = aspect_ratio.split(":")
    return int(w), int(h)


def _ratio(width: int, height: int) -> tuple[int, int]:
    g = math.gcd(width, height)
    return width // g, height // g


# --------------------------------------------------------------------------------------------------
# Field definitions shared by several endpoints (one place for each description and bound).

Prompt = Annotated[str, Field(description="What the image should show.")]
OptionalPrompt = Annotated[str, Field(description="Optional text to steer the variation.")]
Seed = Annotated[
    int | None,
    Field(description="Seed for reproducible output; the same seed and prompt give the same image."),
]
SyncMode = Annotated[
    bool,
    Field(description="Return images as data URIs and keep the request out of fal's history."),
]
NumImages = Annotated[int, Field(ge=1, le=4, description="How many images to generate (1-4).")]
Format = Annotated[OutputFormat, Field(description="File format of the generated images.")]
Tolerance = Annotated[
    SafetyTolerance,
    Field(description="Moderation level as a string, '1' (strictest) to '6' (most permissive)."),
]
EnhancePrompt = Annotated[bool, Field(description="Let the model rewrite the prompt for more detail.")]
SafetyChecker = Annotated[bool, Field(description="Check output for NSFW content and black it out.")]
ImageUrl = Annotated[str, Field(min_length=1, description="URL (or data URI) of the input image.")]
ImagePromptStrength = Annotated[
    float, Field(ge=0, le=1, description="How strongly the image prompt steers the result (0-1).")
]
Steps = Annotated[int, Field(ge=1, le=50, description="Number of inference steps (1-50).")]
Guidance = Annotated[float, Field(ge=1, le=20, description="How closely to follow the prompt (1-20).")]
SizeField = Annotated[
    ImageSizePreset | ImageSize,
    Field(description="Output size: a preset name or an explicit {width, height}."),
]
AspectField = Annotated[AspectRatio, Field(description="Aspect ratio of the output.")]


class FalInput(BaseModel):
    """Base of every endpoint input: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


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
    raw: Annotated[bool, Field(description="Less processed, more natural-looking output.")] = False
    image_url: Annotated[str | None, Field(description="Optional image prompt (URL).")] = None
    image_prompt_strength: ImagePromptStrength = 0.1
    enable_safety_checker: SafetyChecker = True


class FluxProUltraReduxInput(_ProBase):
    """``fal-ai/flux-pro/v1.1-ultra/redux``: variations of an image at ultra resolution."""

    image_url: ImageUrl
    prompt: OptionalPrompt = ""
    aspect_ratio: AspectField = "16:9"
    raw: Annotated[bool, Field(description="Less processed, more natural-looking output.")] = False
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
    """``fal-ai/flux-pro/kontext``: edit an image by instruction."""

    prompt: Annotated[str, Field(description="The edit to make, e.g. 'make the sky stormy'.")]
    image_url: ImageUrl
    guidance_scale: Guidance = 3.5
    aspect_ratio: Annotated[
        AspectRatio | None, Field(description="Aspect ratio of the output; default follows the input.")
    ] = None


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


# --------------------------------------------------------------------------------------------------
# Output


class FalImage(BaseModel):
    """One generated image as fal describes it."""

    model_config = ConfigDict(extra="allow")

    url: str
    width: int | None = None
    height: int | None = None
    content_type: str = "image/jpeg"
    file_name: str | None = None
    file_size: int | None = None


class FluxOutput(BaseModel):
    """The result of every FLUX endpoint. ``has_nsfw_concepts[i]`` is true when image ``i`` was blacked out."""

    model_config = ConfigDict(extra="allow")

    images: list[FalImage]
    timings: dict[str, Any] = Field(default_factory=dict)
    seed: int
    has_nsfw_concepts: list[bool] = Field(default_factory=list)
    prompt: str = ""


INPUT_MODELS: dict[str, type[FalInput]] = {
    "fal-ai/flux-pro/v1.1-ultra": FluxProUltraInput,
    "fal-ai/flux-pro/v1.1-ultra/redux": FluxProUltraReduxInput,
    "fal-ai/flux-pro/v1.1": FluxProV11Input,
    "fal-ai/flux-pro/v1.1/redux": FluxProReduxInput,
    "fal-ai/flux-pro/v1/redux": FluxProReduxInput,
    "fal-ai/flux-pro/kontext": FluxKontextInput,
    "fal-ai/flux/dev": FluxDevInput,
    "fal-ai/flux/schnell": FluxSchnellInput,
}


def field_errors(exc: PydanticValidationError, *, include_input: bool = False) -> list[dict[str, Any]]:
    """A validation failure as fal reports it: FastAPI's 422 ``detail`` entries, under ``loc: ["body", ...]``.

    Shared by the client's pre-check and the emulator, so both describe a bad field the same way.
    """
    errors: list[dict[str, Any]] = json.loads(exc.json(include_url=False, include_input=include_input))
    for error in errors:
        error["loc"] = ["body", *error.get("loc", [])]
    return errors


def output_size(endpoint_id: str, arguments: FalInput) -> tuple[int, int]:
    """The (width, height) an endpoint renders for ``arguments``: what the cost and the emulator rest on."""
    aspect_ratio = getattr(arguments, "aspect_ratio", None)
    if endpoint_id.startswith("fal-ai/flux-pro/v1.1-ultra"):
        return ULTRA_PIXELS[aspect_ratio or "16:9"]
    image_size = getattr(arguments, "image_size", None)
    if isinstance(image_size, ImageSize):
        return image_size.width, image_size.height
    if isinstance(image_size, str):
        return PRESET_PIXELS[image_size]
    return size_for_aspect_ratio(aspect_ratio or "1:1")
