"""The FLUX models fal-flux-mcp offers: what each is for, what it costs, and how long it usually takes.

Prices are fal's published list prices (each model's page on fal.ai); where fal only shows a
reseller's figure, ``price_note`` says so. Estimates are for showing a user what a call will cost
before it is made, not a bill: fal's own invoice is the authority.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fal_flux_mcp.models import INPUT_MODELS, FalInput, output_size

PriceUnit = Literal["image", "megapixel"]
Task = Literal["text-to-image", "image-variation", "image-edit"]

#: fal counts a megapixel as 1024 × 1024 pixels.
_MEGAPIXEL = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One fal endpoint as fal-flux-mcp describes it to users and to the LLM."""

    endpoint_id: str
    title: str
    task: Task
    description: str
    price_usd: float
    price_unit: PriceUnit
    typical_seconds: float
    price_note: str = ""

    @property
    def input_model(self) -> type[FalInput]:
        """The pydantic model of this endpoint's input."""
        return INPUT_MODELS[self.endpoint_id]

    @property
    def parameters(self) -> list[str]:
        """The input fields this endpoint accepts, in schema order."""
        return list(self.input_model.model_fields)

    @property
    def requires_image(self) -> bool:
        """Whether ``image_url`` must be given."""
        field = self.input_model.model_fields.get("image_url")
        return field is not None and field.is_required()

    def estimate_cost(self, arguments: FalInput, unit_price: float | None = None) -> float:
        """Estimated USD for ``arguments``, before submitting: what ``cost_of_images`` will charge for the
        images they ask for. ``unit_price`` is fal's current price when known, else the list price."""
        count = getattr(arguments, "num_images", 1)
        size = output_size(self.endpoint_id, arguments)
        return self.final_cost([size] * count, unit_price)

    def final_cost(self, sizes: Sequence[tuple[int, int]], unit_price: float | None = None) -> float:
        """USD for the images actually returned, ``sizes`` being their (width, height) each."""
        price = self.price_usd if unit_price is None else unit_price
        return cost_of_images(self.price_unit, price, sizes)


def cost_of_images(price_unit: PriceUnit, unit_price: float, sizes: Sequence[tuple[int, int]]) -> float:
    """USD for images of ``sizes`` at ``unit_price`` per image, or per megapixel rounded up per image.

    The one place the arithmetic of fal's price models lives, so that the estimate shown before a call
    and the cost recorded after it cannot disagree on how a unit is counted.
    """
    if price_unit == "image":
        units = len(sizes)
    else:
        units = sum(math.ceil(width * height / _MEGAPIXEL) for width, height in sizes)
    return round(unit_price * units, 6)


MODELS: dict[str, ModelInfo] = {
    info.endpoint_id: info
    for info in (
        ModelInfo(
            "fal-ai/flux-pro/v1.1-ultra",
            "FLUX1.1 [pro] ultra",
            "text-to-image",
            "Highest quality text to image at about 4 megapixels (up to 2K), sized by aspect ratio; "
            "'raw' gives a more natural photographic look. Optional image prompt.",
            0.06,
            "image",
            10.0,
        ),
        ModelInfo(
            "fal-ai/flux-pro/v1.1-ultra/redux",
            "FLUX1.1 [pro] ultra Redux",
            "image-variation",
            "Variations of an input image at ultra resolution, optionally steered by a prompt.",
            0.05,
            "image",
            10.0,
            price_note="price from a reseller listing; fal does not publish it",
        ),
        ModelInfo(
            "fal-ai/flux-pro/v1.1",
            "FLUX1.1 [pro]",
            "text-to-image",
            "Fast, high quality text to image at about 1 megapixel, sized by image_size.",
            0.04,
            "megapixel",
            8.0,
        ),
        ModelInfo(
            "fal-ai/flux-pro/v1.1/redux",
            "FLUX1.1 [pro] Redux",
            "image-variation",
            "Variations of an input image, optionally steered by a prompt; tunable steps and guidance.",
            0.05,
            "image",
            8.0,
            price_note="price from a reseller listing; fal does not publish it",
        ),
        ModelInfo(
            "fal-ai/flux-pro/v1/redux",
            "FLUX.1 [pro] Redux",
            "image-variation",
            "The previous generation's image variation model; may be deprecated by fal.",
            0.05,
            "image",
            8.0,
            price_note="price from a reseller listing; fal does not publish it",
        ),
        ModelInfo(
            "fal-ai/flux-pro/kontext",
            "FLUX.1 Kontext [pro]",
            "image-edit",
            "Edits an input image by instruction ('make it night', 'remove the car') keeping the rest.",
            0.04,
            "image",
            8.0,
        ),
        ModelInfo(
            "fal-ai/flux/dev",
            "FLUX.1 [dev]",
            "text-to-image",
            "Open-weights 12B model: cheap, good quality, tunable steps and guidance.",
            0.025,
            "megapixel",
            5.0,
            price_note="typical time not published by fal",
        ),
        ModelInfo(
            "fal-ai/flux/schnell",
            "FLUX.1 [schnell]",
            "text-to-image",
            "Fastest and cheapest: 1-4 steps, for drafts and quick iterations.",
            0.003,
            "megapixel",
            1.0,
        ),
    )
}

DEFAULT_MODEL = "fal-ai/flux-pro/v1.1-ultra"


def get_model(endpoint_id: str) -> ModelInfo:
    """The registry entry for ``endpoint_id``; a ``KeyError`` that lists the known ids otherwise."""
    try:
        return MODELS[endpoint_id]
    except KeyError:
        known = ", ".join(MODELS)
        raise KeyError(f"unknown model {endpoint_id!r}; known models: {known}") from None
