"""From a tool's arguments to the input fal receives: checked against the model, input images resolved.

Everything that can refuse a job is done here, before anything is paid for: the fields the chosen
model does not take, the inputs it needs, its fal schema, and the input images (``_sources``), which
are located and measured before any is uploaded, so that a mask of the wrong size costs nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fal_flux_mcp.fal import ValidationError, validate_input
from fal_flux_mcp.models import FalInput, image_size_for_aspect_ratio
from fal_flux_mcp.registry import MODELS, ModelInfo
from fal_flux_mcp.server._errors import JobError
from fal_flux_mcp.server._schemas import GenerationParams, ImageInfo
from fal_flux_mcp.server._sources import AllowedDirs, Source, Sources, check_mask
from fal_flux_mcp.settings import Settings

if TYPE_CHECKING:
    from fal_flux_mcp.fal import FalClient

#: What an input image not located yet stands for when a call is only checked: a URL fal would accept.
_STAND_IN_URL = "https://example.invalid/input.png"
_IMAGE_FIELDS = ("image_urls", "image_url", "mask_url")


async def no_dirs() -> Sequence[Path]:
    """No folder is allowed: local paths are refused."""
    return ()


def tool_fields_for(model: ModelInfo) -> list[str]:
    """The generation arguments a model takes, by the tools' names (aspect_ratio works for every model
    sized by aspect ratio or image_size, and a model taking a list of images takes one ``image_url`` too)."""
    taken = set(model.parameters) | {"model", "max_cost_usd"}
    if "image_size" in taken:
        taken.add("aspect_ratio")
    if model.takes_several_images:
        taken.add("image_url")
    return [name for name in GenerationParams.model_fields if name in taken]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A call ready to submit: its model, its fal input, and its input images' sizes (where known)."""

    model: ModelInfo
    fal_input: FalInput
    input_sizes: list[tuple[int, int]]


class InputBuilder:
    """Builds and checks fal inputs; resolves input images through their user's fal client (``fal``)."""

    def __init__(
        self,
        settings: Settings,
        fal: Callable[[str], FalClient],
        find_image: Callable[[str, int, str], ImageInfo],
    ) -> None:
        self.settings = settings
        self._fal = fal
        self._find_image = find_image

    def _owned_images(self, owner: str) -> Callable[[str, int], ImageInfo]:
        """Previous results as ``owner`` may use them: theirs only."""
        return lambda job_id, index: self._find_image(job_id, index, owner)

    def build(self, params: GenerationParams) -> tuple[ModelInfo, dict[str, Any]]:
        """The fal arguments for ``params``; a ``JobError`` naming the fields if the model does not take one.

        Input images are left as given: they may still be local paths or previous results.
        """
        model = MODELS[params.model]
        accepted = model.parameters
        fields = params.model_dump(exclude_none=True, exclude={"model", "webhook_url", "max_cost_usd"})
        if "aspect_ratio" in fields and "aspect_ratio" not in accepted and "image_size" in accepted:
            if "image_size" in fields:
                raise JobError(
                    f"Give either aspect_ratio or image_size, not both: {model.endpoint_id} is sized by "
                    "image_size, and aspect_ratio is turned into one."
                )
            size = image_size_for_aspect_ratio(fields.pop("aspect_ratio"))
            fields["image_size"] = size if isinstance(size, str) else size.model_dump()
        _fit_images(model, fields)
        unsupported = [name for name in fields if name not in accepted]
        if unsupported:
            hint = " Use aspect_ratio to shape the image." if "image_size" in unsupported else ""
            raise JobError(
                f"{model.endpoint_id} does not take {', '.join(unsupported)}. It takes: "
                f"{', '.join(tool_fields_for(model))}.{hint} Remove the field or pick another model (list_models)."
            )
        missing = [name for name in model.required_inputs if name not in fields]
        if missing:
            raise JobError(f"{model.endpoint_id} ({model.title}) needs {_needs(missing)}.")
        if "image_urls" in fields and not fields["image_urls"]:
            raise JobError(f"{model.endpoint_id} needs at least one image in image_urls.")
        if model.task == "text-to-image" and not params.prompt.strip():
            raise JobError(f"{model.endpoint_id} needs a prompt describing the image.")
        return model, fields

    async def prepare(self, params: GenerationParams, allowed_dirs: AllowedDirs, owner: str) -> Prepared:
        """Validate everything and resolve the input images (previous results: ``owner``'s only): after
        this, submitting cannot be refused."""
        model, fields = self.build(params)
        self.checked(params)  # every other field first: a bad value must cost neither money nor time
        fal = functools.partial(self._fal, owner)
        with Sources(self.settings, fal, self._owned_images(owner), allowed_dirs) as sources:
            located = await self._locate(sources, fields, measure=_sizes_matter(model, fields))
            for name, found in located.items():
                urls = [await sources.url_for(source) for source in found]
                fields[name] = urls if name == "image_urls" else urls[0]
        return Prepared(model, self._validate(model, fields), _sizes(located))

    async def priced(self, params: GenerationParams, allowed_dirs: AllowedDirs, owner: str) -> Prepared:
        """``checked``, with the input images' sizes where they change the price or the output: read
        (never uploaded) to price a call before the user is asked about it."""
        model, fal_input = self.checked(params)
        _, fields = self.build(params)
        if not _sizes_matter(model, fields):
            return Prepared(model, fal_input, [])
        fal = functools.partial(self._fal, owner)
        with Sources(self.settings, fal, self._owned_images(owner), allowed_dirs) as sources:
            located = await self._locate(sources, fields, measure=True)
        return Prepared(model, fal_input, _sizes(located))

    @staticmethod
    async def _locate(sources: Sources, fields: dict[str, Any], *, measure: bool) -> dict[str, list[Source]]:
        """Every input image located (and measured as asked), a mask checked against its image."""
        located: dict[str, list[Source]] = {}
        for name in _IMAGE_FIELDS:
            if name not in fields:
                continue
            values = fields[name] if name == "image_urls" else [fields[name]]
            located[name] = [
                await sources.locate(_label(name, index), value, measure=measure)
                for index, value in enumerate(values)
            ]
        if "mask_url" in located and "image_url" in located:
            check_mask(located["image_url"][0], located["mask_url"][0])
        return located

    def checked(self, params: GenerationParams) -> tuple[ModelInfo, FalInput]:
        """The model and fal input for ``params``, with stand-ins for input images not located yet.

        Enough to check every value before anything is uploaded or asked.
        """
        model, fields = self._stand_ins(params)
        return model, self._validate(model, fields)

    def _stand_ins(self, params: GenerationParams) -> tuple[ModelInfo, dict[str, Any]]:
        model, fields = self.build(params)
        for name in ("image_url", "mask_url"):
            if fields.get(name):
                fields[name] = _STAND_IN_URL
        if "image_urls" in fields:
            fields["image_urls"] = [_STAND_IN_URL] * len(fields["image_urls"])
        return model, fields

    @staticmethod
    def _validate(model: ModelInfo, fields: dict[str, Any]) -> FalInput:
        try:
            return validate_input(model.endpoint_id, fields)
        except ValidationError as exc:
            raise JobError(f"{exc.message}. Fix the value and call again.") from None


def _fit_images(model: ModelInfo, fields: dict[str, Any]) -> None:
    """Give the model its images the way it takes them: one ``image_url`` as a one-item
    ``image_urls``, and a one-item ``image_urls`` as ``image_url``."""
    parameters = model.parameters
    if "image_url" in fields and "image_url" not in parameters and "image_urls" in parameters:
        fields["image_urls"] = [fields.pop("image_url"), *fields.get("image_urls", [])]
    urls = fields.get("image_urls")
    if urls is not None and "image_urls" not in parameters and "image_url" in parameters:
        if len(urls) != 1 or "image_url" in fields:
            raise JobError(
                f"{model.endpoint_id} ({model.title}) edits one image; {len(urls) + ('image_url' in fields)} "
                "were given. Pass one, or pick a model that takes several (list_models: multi-image-edit)."
            )
        fields["image_url"] = fields.pop("image_urls")[0]


def _sizes_matter(model: ModelInfo, fields: dict[str, Any]) -> bool:
    """Whether the input images' sizes change the price or the output (so remote ones are read)."""
    return (
        model.counts_input_megapixels
        or "mask_url" in fields
        or (
            fields.get("image_size", "auto") == "auto"
            and "image_size" in model.parameters
            and model.requires_image
        )
    )


def _sizes(located: dict[str, list[Source]]) -> list[tuple[int, int]]:
    """The input images' sizes in ``input_image_urls`` order; none if any is unknown."""
    order = [*located.get("image_urls", []), *located.get("image_url", []), *located.get("mask_url", [])]
    sizes = [source.size for source in order]
    return [] if None in sizes else sizes  # type: ignore[misc]


def _label(name: str, index: int) -> str:
    return f"image_urls[{index}]" if name == "image_urls" else name


def _needs(missing: list[str]) -> str:
    words = {
        "image_url": "an input image: pass image_url (an https URL, a local file inside the allowed folders, or a "
        "previous result flux://images/{job_id}/{index})",
        "image_urls": "input images: pass image_urls (https URLs, local files inside the allowed folders, or "
        "previous results flux://images/{job_id}/{index})",
        "mask_url": "a mask: pass mask_url, an image of the same size as image_url, white where it should change",
        "finetune_id": "pass finetune_id, the id of your fine-tune on fal",
        "finetune_strength": "pass finetune_strength, how strongly the fine-tune applies (0-2)",
    }
    return "; and ".join(words[name] for name in missing)


def journal_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The input as sent, with inline data URIs shortened: the journal keeps facts, not image bytes."""
    shortened = dict(arguments)
    for name in _IMAGE_FIELDS:
        value = arguments.get(name)
        if isinstance(value, list):
            shortened[name] = [_short(item) for item in value]
        elif isinstance(value, str):
            shortened[name] = _short(value)
    return shortened


def _short(value: object) -> object:
    if isinstance(value, str) and value.startswith("data:"):
        return f"{value.split(',', 1)[0]},<{len(value)} characters>"
    return value
