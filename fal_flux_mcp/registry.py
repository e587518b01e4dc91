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
Task = Literal["text-to-image", "image-edit", "multi-image-edit", "image-variation", "inpaint"]

#: fal counts a megapixel as 1024 × 1024 pixels.
_MEGAPIXEL = 1024 * 1024
#: The inputs a call may need besides the prompt, in the order a user is told about them.
_INPUTS = ("image_url", "image_urls", "mask_url", "finetune_id", "finetune_strength")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One fal endpoint as fal-flux-mcp describes it to users and to the LLM.

    ``price_usd`` is per ``price_unit``; for FLUX.2 [pro] and [max] it is the first megapixel's price
    and ``extra_megapixel_usd`` each further one's. ``counts_input_megapixels``: fal bills the input
    images' megapixels too. ``price_usd`` None: fal publishes no price, only its pricing API can tell.
    """

    endpoint_id: str
    title: str
    task: Task
    description: str
    price_usd: float | None
    price_unit: PriceUnit
    typical_seconds: float
    price_note: str = ""
    extra_megapixel_usd: float | None = None
    counts_input_megapixels: bool = False

    @property
    def input_model(self) -> type[FalInput]:
        """The pydantic model of this endpoint's input."""
        return INPUT_MODELS[self.endpoint_id]

    @property
    def parameters(self) -> list[str]:
        """The input fields this endpoint accepts, in schema order."""
        return list(self.input_model.model_fields)

    @property
    def required_inputs(self) -> list[str]:
        """What a call must give besides the prompt (input images, a mask, a fine-tune)."""
        fields = self.input_model.model_fields
        return [name for name in _INPUTS if name in fields and fields[name].is_required()]

    @property
    def requires_image(self) -> bool:
        """Whether an input image (``image_url`` or ``image_urls``) must be given."""
        return bool({"image_url", "image_urls"} & set(self.required_inputs))

    @property
    def takes_several_images(self) -> bool:
        """Whether the endpoint takes a list of input images (``image_urls``)."""
        return "image_urls" in self.input_model.model_fields

    def estimate_cost(
        self,
        arguments: FalInput,
        unit_price: float | None = None,
        input_sizes: Sequence[tuple[int, int]] = (),
    ) -> float:
        """Estimated USD for ``arguments``, before submitting: what ``final_cost`` will charge for the
        images they ask for. ``unit_price`` is fal's current price when known, else the list price;
        ``input_sizes`` the input images' sizes (their output size follows them, and some models
        bill their megapixels)."""
        count = getattr(arguments, "num_images", 1)
        size = output_size(self.endpoint_id, arguments, input_sizes)
        return self.final_cost([size] * count, unit_price, self.billed_input_megapixels(input_sizes))

    def billed_input_megapixels(self, input_sizes: Sequence[tuple[int, int]]) -> int:
        """The input megapixels fal bills for this model (none unless it counts them)."""
        return megapixels_of(input_sizes) if self.counts_input_megapixels else 0

    def final_cost(
        self,
        sizes: Sequence[tuple[int, int]],
        unit_price: float | None = None,
        input_megapixels: int = 0,
    ) -> float:
        """USD for the images actually returned, ``sizes`` being their (width, height) each, plus the
        ``input_megapixels`` billed (``billed_input_megapixels``).

        A ``unit_price`` from fal that differs from the list price scales the extra-megapixel price
        in proportion: fal's pricing API gives one number per endpoint.
        """
        price = self.price_usd if unit_price is None else unit_price
        if price is None:
            raise ValueError(f"{self.endpoint_id} has no known price")
        if self.extra_megapixel_usd is None:
            return cost_of_images(self.price_unit, price, sizes, input_megapixels)
        extra = self.extra_megapixel_usd * (price / self.price_usd if self.price_usd else 1.0)
        units = megapixels_of(sizes) + input_megapixels
        return round(price + extra * max(0, units - 1), 6)


def megapixels_of(sizes: Sequence[tuple[int, int]]) -> int:
    """Whole megapixels of ``sizes``, each image rounded up on its own, as fal bills them."""
    return sum(math.ceil(width * height / _MEGAPIXEL) for width, height in sizes)


def cost_of_images(
    price_unit: PriceUnit, unit_price: float, sizes: Sequence[tuple[int, int]], input_megapixels: int = 0
) -> float:
    """USD for images of ``sizes`` at ``unit_price`` per image, or per megapixel rounded up per image
    (plus ``input_megapixels``, for the models fal bills by input megapixels too).

    The one place the arithmetic of fal's price models lives, so that the estimate shown before a call
    and the cost recorded after it cannot disagree on how a unit is counted.
    """
    units = len(sizes) if price_unit == "image" else megapixels_of(sizes) + input_megapixels
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
            "fal-ai/flux-pro/kontext/max",
            "FLUX.1 Kontext [max]",
            "image-edit",
            "Kontext's premium editor: better prompt adherence and typography than Kontext [pro].",
            0.08,
            "image",
            10.0,
            price_note="typical time not published by fal",
        ),
        ModelInfo(
            "fal-ai/flux-pro/kontext/multi",
            "FLUX.1 Kontext [pro] multi",
            "multi-image-edit",
            "Combines or edits several input images by instruction (experimental at fal).",
            0.04,
            "image",
            10.0,
            price_note="typical time not published by fal",
        ),
        ModelInfo(
            "fal-ai/flux-pro/kontext/max/multi",
            "FLUX.1 Kontext [max] multi",
            "multi-image-edit",
            "Kontext [max] on several input images (experimental at fal).",
            0.08,
            "image",
            12.0,
            price_note="typical time not published by fal",
        ),
        ModelInfo(
            "fal-ai/flux-pro/v1/fill",
            "FLUX.1 [pro] Fill",
            "inpaint",
            "Repaints only the masked part of an image (mask_url: white where it changes, same size "
            "as the image); the rest stays untouched.",
            0.05,
            "megapixel",
            10.0,
            price_note="typical time not published by fal",
        ),
        ModelInfo(
            "fal-ai/flux-pro/v1.1-ultra-finetuned",
            "FLUX1.1 [pro] ultra fine-tuned",
            "text-to-image",
            "Ultra with your own fine-tune: needs finetune_id (a fine-tune trained on fal) and "
            "finetune_strength (0-2).",
            None,
            "image",
            10.0,
            price_note="fal publishes no price for it: it is quoted from fal's pricing API, and not run "
            "when that cannot be read",
        ),
        ModelInfo(
            "fal-ai/flux-2-pro",
            "FLUX.2 [pro]",
            "text-to-image",
            "FLUX.2's production model: top quality with no tuning knobs, one image per call.",
            0.03,
            "megapixel",
            10.0,
            price_note="$0.03 the first megapixel, $0.015 each further one; typical time not published by fal",
            extra_megapixel_usd=0.015,
        ),
        ModelInfo(
            "fal-ai/flux-2-pro/edit",
            "FLUX.2 [pro] edit",
            "image-edit",
            "Edits one image or combines several (image_urls; refer to them as @image1, @image2) by "
            "instruction, with FLUX.2 [pro] quality.",
            0.03,
            "megapixel",
            12.0,
            price_note="$0.03 the first megapixel, $0.015 each further one, input images included; typical "
            "time not published by fal",
            extra_megapixel_usd=0.015,
            counts_input_megapixels=True,
        ),
        ModelInfo(
            "fal-ai/flux-2-flex",
            "FLUX.2 [flex]",
            "text-to-image",
            "FLUX.2 with tunable steps and guidance; strong typography.",
            0.05,
            "megapixel",
            15.0,
            price_note="typical time not published by fal",
        ),
        ModelInfo(
            "fal-ai/flux-2-flex/edit",
            "FLUX.2 [flex] edit",
            "image-edit",
            "Edits or combines image_urls with FLUX.2 [flex]: tunable steps and guidance.",
            0.05,
            "megapixel",
            15.0,
            price_note="input images count as megapixels too; typical time not published by fal",
            counts_input_megapixels=True,
        ),
        ModelInfo(
            "fal-ai/flux-2-max/edit",
            "FLUX.2 [max] edit",
            "image-edit",
            "FLUX.2's best editor: the most realistic, precise and consistent edits of image_urls.",
            0.07,
            "megapixel",
            20.0,
            price_note="$0.07 the first megapixel, $0.03 each further one, input images included; typical "
            "time not published by fal",
            extra_megapixel_usd=0.03,
            counts_input_megapixels=True,
        ),
        ModelInfo(
            "fal-ai/flux-2/flash",
            "FLUX.2 [flash]",
            "text-to-image",
            "FLUX.2 [dev] distilled for speed: very cheap drafts with crisp text; PNG by default.",
            0.005,
            "megapixel",
            2.0,
            price_note="typical time not published by fal",
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

#: The editor ``edit_image`` uses when none is named: the best in the registry for the inputs given.
EDIT_ONE_IMAGE = "fal-ai/flux-pro/kontext"
EDIT_SEVERAL_IMAGES = "fal-ai/flux-pro/kontext/multi"
EDIT_WITH_MASK = "fal-ai/flux-pro/v1/fill"


def get_model(endpoint_id: str) -> ModelInfo:
    """The registry entry for ``endpoint_id``; a ``KeyError`` that lists the known ids otherwise."""
    try:
        return MODELS[endpoint_id]
    except KeyError:
        known = ", ".join(MODELS)
        raise KeyError(f"unknown model {endpoint_id!r}; known models: {known}") from None
