"""What ``list_models`` says: the registry grouped by task, with the inputs and the price of each model."""

from __future__ import annotations

from pydantic import BaseModel, Field

from fal_flux_mcp.registry import (
    DEFAULT_MODEL,
    EDIT_ONE_IMAGE,
    EDIT_SEVERAL_IMAGES,
    EDIT_WITH_MASK,
    MODELS,
    ModelInfo,
)
from fal_flux_mcp.server._inputs import tool_fields_for
from fal_flux_mcp.server._prices import PriceBook


class ModelSummary(BaseModel):
    """One model in the registry."""

    id: str = Field(description="fal endpoint id, the value for the model argument.")
    title: str = Field(description="Product name.")
    task: str = Field(description="text-to-image, image-edit, multi-image-edit, image-variation or inpaint.")
    description: str = Field(description="What it is good for.")
    inputs: list[str] = Field(
        description="What a call must give besides the prompt (image_url, image_urls, mask_url, finetune_id...)."
    )
    parameters: list[str] = Field(description="The generate_image / submit_job arguments it takes.")
    requires_image: bool = Field(description="Whether an input image (image_url or image_urls) is required.")
    price_usd: float | None = Field(
        description="Price per unit (the first megapixel's, for models priced by tiers); null: fal "
        "publishes none and its pricing API did not give one."
    )
    price_unit: str = Field(description="'image' or 'megapixel' (rounded up per image).")
    price: str = Field(description="How a call is billed, in words.")
    price_source: str = Field(description="fal pricing API (this account's price) or built-in price list.")
    typical_seconds: float = Field(description="Typical generation time.")
    price_note: str = Field(description="Caveats about the price, if any.")


class ModelList(BaseModel):
    """The models fal-flux-mcp offers, grouped by task."""

    default_model: str = Field(description="Used by generate_image when model is not given.")
    edit_defaults: dict[str, str] = Field(
        description="The editor edit_image picks when model is not given: for one image, several, a mask."
    )
    by_task: dict[str, list[str]] = Field(description="The model ids of each task, best first.")
    models: list[ModelSummary] = Field(description="Every available model, in task order.")


#: The order tasks are listed in: making images, then changing them.
_TASKS = ("text-to-image", "image-edit", "multi-image-edit", "inpaint", "image-variation")


async def model_list(prices: PriceBook) -> ModelList:
    """Every registry model, at this account's price where fal tells it, grouped by task."""
    ordered = sorted(MODELS.values(), key=lambda info: _TASKS.index(info.task))
    summaries = []
    for info in ordered:
        price, source = await prices.unit_price(info)
        summaries.append(
            ModelSummary(
                id=info.endpoint_id,
                title=info.title,
                task=info.task,
                description=info.description,
                inputs=info.required_inputs,
                parameters=tool_fields_for(info),
                requires_image=info.requires_image,
                price_usd=price,
                price_unit=info.price_unit,
                price=_billing(info, price),
                price_source=source,
                typical_seconds=info.typical_seconds,
                price_note=info.price_note,
            )
        )
    by_task: dict[str, list[str]] = {}
    for summary in summaries:
        by_task.setdefault(summary.task, []).append(summary.id)
    return ModelList(
        default_model=DEFAULT_MODEL,
        edit_defaults={
            "one image": EDIT_ONE_IMAGE,
            "several images": EDIT_SEVERAL_IMAGES,
            "mask": EDIT_WITH_MASK,
        },
        by_task=by_task,
        models=summaries,
    )


def _billing(info: ModelInfo, price: float | None) -> str:
    """How a call to ``info`` is billed, in words, at ``price`` per unit."""
    if price is None:
        return "not published by fal; asked from fal's pricing API when a call is made"
    inputs = ", input images included" if info.counts_input_megapixels else ""
    if info.extra_megapixel_usd is not None and info.price_usd:
        extra = info.extra_megapixel_usd * price / info.price_usd
        return f"${price:g} the first megapixel, ${extra:g} each further one{inputs} (rounded up per image)"
    if info.price_unit == "megapixel":
        return f"${price:g} per megapixel{inputs} (rounded up per image)"
    return f"${price:g} per image"
