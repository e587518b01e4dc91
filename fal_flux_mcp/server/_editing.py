"""``edit_image``'s choices: which editor a call gets when none is named, and the generation it becomes.

The default is the best editor in the registry for the inputs given: Fill when there is a mask (only
the masked part changes), Kontext multi for several images, Kontext [pro] for one. The reason for the
choice travels with it, so that the result can say which model ran and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fal_flux_mcp.models import AspectRatio, OutputFormat
from fal_flux_mcp.registry import EDIT_ONE_IMAGE, EDIT_SEVERAL_IMAGES, EDIT_WITH_MASK, MODELS
from fal_flux_mcp.server._schemas import GenerationParams, Tolerance, optional

#: The models ``edit_image`` may run: those that change input images.
EditModelId: TypeAlias = Literal[
    "fal-ai/flux-pro/kontext",
    "fal-ai/flux-pro/kontext/max",
    "fal-ai/flux-pro/kontext/multi",
    "fal-ai/flux-pro/kontext/max/multi",
    "fal-ai/flux-pro/v1/fill",
    "fal-ai/flux-2-pro/edit",
    "fal-ai/flux-2-flex/edit",
    "fal-ai/flux-2-max/edit",
]
EDIT_TASKS = frozenset({"image-edit", "multi-image-edit", "inpaint"})
assert set(EditModelId.__args__) == {m.endpoint_id for m in MODELS.values() if m.task in EDIT_TASKS}  # type: ignore[attr-defined]


class EditParams(BaseModel):
    """``edit_image``'s input: the change in words, the image(s), an optional mask, the common options."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        description="The change to make, in words: 'make it brighter', 'put a red hat on the cat', "
        "'the person from image 1 in the room from image 2'.",
        min_length=1,
        max_length=10_000,
    )
    image_url: str | None = optional(
        "The image to edit: an https URL, a data URI, a local file path inside the allowed directories, "
        "or a previous result flux://images/{job_id}/{index} (e.g. the last image made).",
        min_length=1,
    )
    image_urls: list[Annotated[str, Field(min_length=1)]] | None = optional(
        "Several images to edit or combine, each given as image_url is.", min_length=1
    )
    mask_url: str | None = optional(
        "Only repaint part of image_url: a mask of exactly its size, white where it should change, black "
        "where it stays; given as image_url is. Picks Fill unless model says otherwise.",
        min_length=1,
    )
    model: EditModelId | None = optional(
        "The editor. Default: fal-ai/flux-pro/v1/fill with a mask, fal-ai/flux-pro/kontext/multi for "
        "several images, fal-ai/flux-pro/kontext for one. Others: .../kontext/max (better), the FLUX.2 "
        "edits fal-ai/flux-2-pro/edit, fal-ai/flux-2-flex/edit, fal-ai/flux-2-max/edit (best; one or "
        "several images), .../kontext/max/multi. list_models gives prices."
    )
    aspect_ratio: AspectRatio | None = optional("Aspect ratio of the result; default follows the input.")
    num_images: int | None = optional(
        "How many versions to make, 1-4 (default 1); FLUX.2 edits make one.", ge=1, le=4
    )
    seed: int | None = optional("Seed for reproducible output: the same seed and prompt give the same image.")
    output_format: OutputFormat | None = optional("File format of the images (default jpeg).")
    safety_tolerance: Tolerance | None = optional(
        "Moderation level, '1' strictest to '6' most permissive (FLUX.2: up to '5'; default '2')."
    )
    max_cost_usd: float | None = optional(
        "The most this call may cost, in USD. It can only lower the user's limit for this call, never "
        "raise it.",
        ge=0,
    )

    @model_validator(mode="after")
    def _an_image(self) -> EditParams:
        if self.image_url is None and not self.image_urls:
            raise ValueError(
                "give the image to edit: image_url (one image) or image_urls (several), as an https URL, "
                "a local file path, or a previous result flux://images/{job_id}/{index}"
            )
        return self


@dataclass(frozen=True, slots=True)
class EditorChoice:
    """The editor a call runs on, and why it was picked."""

    endpoint_id: str
    reason: str

    def sentence(self) -> str:
        """The choice as said in the result."""
        return f"Edited with {MODELS[self.endpoint_id].title} ({self.endpoint_id}): {self.reason}."


def choose_editor(
    model: str | None, image_url: str | None, image_urls: list[str] | None, mask_url: str | None
) -> EditorChoice:
    """The editor for these inputs: ``model`` when named, else the registry's best for them."""
    if model is not None:
        return EditorChoice(model, "the model asked for")
    if mask_url is not None:
        return EditorChoice(EDIT_WITH_MASK, "a mask was given, so only its white part is repainted")
    count = len(image_urls or []) + (image_url is not None)
    if count > 1:
        return EditorChoice(EDIT_SEVERAL_IMAGES, f"{count} images were given, combined by instruction")
    return EditorChoice(EDIT_ONE_IMAGE, "one image was given, edited by instruction")


def as_generation(params: EditParams, choice: EditorChoice) -> GenerationParams:
    """The generation ``params`` ask for, on the chosen editor (checked like any generation)."""
    fields = params.model_dump(exclude_none=True, exclude={"model"})
    return GenerationParams.model_validate({**fields, "model": choice.endpoint_id})
