"""What fal's FLUX endpoints share: enums, sizes, field definitions, the input base and the output.

Field names, defaults, enums and bounds follow fal's published schemas (each model's API page on
fal.ai). Each description and bound is written once here and reused by every endpoint that has it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

AspectRatio: TypeAlias = Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
ImageSizePreset: TypeAlias = Literal[
    "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]
#: The FLUX.2 edit endpoints also take ``auto``: the model picks the size from the input images.
EditImageSizePreset: TypeAlias = Literal[
    "auto", "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]
OutputFormat: TypeAlias = Literal["jpeg", "png"]
SafetyTolerance: TypeAlias = Literal["1", "2", "3", "4", "5", "6"]
#: FLUX.2 stops at "5".
Flux2SafetyTolerance: TypeAlias = Literal["1", "2", "3", "4", "5"]
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
    return _fit(w_ratio, h_ratio, megapixels)


def size_like(width: int, height: int, megapixels: float = 1.0) -> tuple[int, int]:
    """At most ``megapixels`` in the proportions of a ``width`` x ``height`` image, in multiples of 16."""
    return _fit(max(1, width), max(1, height), megapixels)


def _fit(w_ratio: int, h_ratio: int, megapixels: float) -> tuple[int, int]:
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
EditPrompt = Annotated[str, Field(description="The edit to make, e.g. 'make the sky stormy'.")]
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
Flux2Tolerance = Annotated[
    Flux2SafetyTolerance,
    Field(description="Moderation level as a string, '1' (strictest) to '5' (most permissive)."),
]
EnhancePrompt = Annotated[bool, Field(description="Let the model rewrite the prompt for more detail.")]
SafetyChecker = Annotated[bool, Field(description="Check output for NSFW content and black it out.")]
ImageUrl = Annotated[str, Field(min_length=1, description="URL (or data URI) of the input image.")]
ImageUrls = Annotated[list[str], Field(description="URLs (or data URIs) of the input images.")]
MaskUrl = Annotated[
    str,
    Field(min_length=1, description="URL of the mask: white where the image changes, the image's size."),
]
ImagePromptStrength = Annotated[
    float, Field(ge=0, le=1, description="How strongly the image prompt steers the result (0-1).")
]
Steps = Annotated[int, Field(ge=1, le=50, description="Number of inference steps (1-50).")]
Guidance = Annotated[float, Field(ge=1, le=20, description="How closely to follow the prompt (1-20).")]
SizeField = Annotated[
    ImageSizePreset | ImageSize,
    Field(description="Output size: a preset name or an explicit {width, height}."),
]
EditSizeField = Annotated[
    EditImageSizePreset | ImageSize,
    Field(
        description="Output size: 'auto' (chosen from the input), a preset or an explicit {width, height}."
    ),
]
AspectField = Annotated[AspectRatio, Field(description="Aspect ratio of the output.")]
OptionalAspect = Annotated[
    AspectRatio | None, Field(description="Aspect ratio of the output; default follows the input.")
]


class FalInput(BaseModel):
    """Base of every endpoint input: unknown fields are an error, not silently dropped.

    Whether fal ignores or rejects unknown fields is not known, and a field silently dropped is a
    parameter the user believes they set.
    """

    model_config = ConfigDict(extra="forbid")


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
    """The result of every FLUX endpoint. ``has_nsfw_concepts[i]`` is true when image ``i`` was blacked out.

    FLUX.2's endpoints answer only ``images`` and ``seed``; the other keys then keep their defaults.
    """

    model_config = ConfigDict(extra="allow")

    images: list[FalImage]
    timings: dict[str, Any] = Field(default_factory=dict)
    seed: int
    has_nsfw_concepts: list[bool] = Field(default_factory=list)
    prompt: str = ""
