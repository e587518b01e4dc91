"""What a user is quoted and charged: fal's current prices when the key may read them, list prices
otherwise, read from fal once a day for every model at once; and the cost of what actually came back.

Everything runs against the emulator's pricing API (``/v1/models/pricing``) over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.fal import AuthenticationError, FalClient
from fal_flux_mcp.registry import MODELS, get_model
from fal_flux_mcp.server._errors import JobError
from fal_flux_mcp.server._prices import PriceBook, Quote
from fal_flux_mcp.settings import Settings

pytestmark = pytest.mark.anyio

ULTRA = get_model("fal-ai/flux-pro/v1.1-ultra")  # per image, list price 0.06
DEV = get_model("fal-ai/flux/dev")  # per megapixel, list price 0.025
KONTEXT = get_model("fal-ai/flux-pro/kontext")  # per image, list price 0.04


@pytest.fixture
async def fal(settings: Settings) -> AsyncIterator[FalClient]:
    async with FalClient.from_settings(settings) as client:
        yield client


@pytest.fixture
def book(fal: FalClient) -> PriceBook:
    return PriceBook(lambda: fal)


async def test_quotes_use_fals_current_price_when_it_differs_from_the_list(
    emulator: Emulator, book: PriceBook
) -> None:
    emulator.config.prices = {**emulator.config.prices, ULTRA.endpoint_id: 0.07, DEV.endpoint_id: 0.03}

    ultra = await book.quote(ULTRA, ULTRA.input_model.model_validate({"prompt": "x", "num_images": 2}))
    dev = await book.quote(
        DEV, DEV.input_model.model_validate({"prompt": "x", "image_size": {"width": 2048, "height": 1024}})
    )

    assert ultra == Quote(
        cost_usd=pytest.approx(0.14), unit_price=0.07, unit="image", source="fal pricing API"
    )
    # fal's pricing says "image" for every model; the unit stays the registry's per-megapixel one.
    assert dev == Quote(
        cost_usd=pytest.approx(0.06), unit_price=0.03, unit="megapixel", source="fal pricing API"
    )


async def test_a_key_without_the_pricing_permission_gets_list_prices_and_is_not_asked_again(
    emulator: Emulator, book: PriceBook
) -> None:
    emulator.config.pricing_permission = False
    emulator.config.prices = {ULTRA.endpoint_id: 0.07}

    first = await book.quote(ULTRA, ULTRA.input_model.model_validate({"prompt": "x", "num_images": 3}))
    second = await book.unit_price(DEV)

    assert first == Quote(
        cost_usd=pytest.approx(0.18), unit_price=0.06, unit="image", source="built-in price list"
    )
    assert second == (0.025, "built-in price list")
    assert emulator.counters["pricing"] == 1


async def test_prices_of_every_model_are_read_in_one_request_shared_by_concurrent_callers(
    emulator: Emulator, book: PriceBook
) -> None:
    async with anyio.create_task_group() as tg:
        for model in MODELS.values():
            tg.start_soon(book.unit_price, model)
    await book.quote(
        KONTEXT, KONTEXT.input_model.model_validate({"prompt": "x", "image_url": "https://a/b.png"})
    )

    assert emulator.counters["pricing"] == 1


async def test_prices_are_read_again_once_they_expire(emulator: Emulator, fal: FalClient) -> None:
    book = PriceBook(lambda: fal, ttl_seconds=0)
    assert await book.unit_price(ULTRA) == (0.06, "fal pricing API")
    emulator.config.prices = {ULTRA.endpoint_id: 0.07}
    assert await book.unit_price(ULTRA) == (0.07, "fal pricing API")
    assert emulator.counters["pricing"] == 2


async def test_a_model_fal_does_not_price_gets_its_list_price(emulator: Emulator, book: PriceBook) -> None:
    emulator.config.prices = {ULTRA.endpoint_id: 0.07}
    assert await book.unit_price(ULTRA) == (0.07, "fal pricing API")
    assert await book.unit_price(DEV) == (0.025, "built-in price list")
    assert emulator.counters["pricing"] == 1


async def test_when_fal_fails_list_prices_are_quoted_and_fal_is_asked_again_later(
    emulator: Emulator, fal: FalClient
) -> None:
    emulator.inject("pricing", "500", count=1)
    patient = PriceBook(lambda: fal)  # waits a minute before asking a failing fal again
    assert await patient.unit_price(ULTRA) == (0.06, "built-in price list")
    assert await patient.unit_price(ULTRA) == (0.06, "built-in price list")
    assert emulator.counters["pricing"] == 1

    emulator.config.prices = {ULTRA.endpoint_id: 0.07}
    emulator.inject("pricing", "500", count=1)
    eager = PriceBook(lambda: fal, retry_seconds=0)
    assert await eager.unit_price(ULTRA) == (0.06, "built-in price list")
    assert await eager.unit_price(ULTRA) == (0.07, "fal pricing API")


async def test_the_final_cost_counts_the_images_actually_returned(book: PriceBook) -> None:
    # Per image: four asked for, two came back (the rest refused), two are paid for.
    assert book.final(ULTRA, 0.07, [(2752, 1536), (2752, 1536)]) == pytest.approx(0.14)
    # Per megapixel, rounded up per image: 2 + 1 + 2 megapixels.
    sizes = [(2048, 1024), (1024, 1024), (1025, 1024)]
    assert book.final(DEV, 0.025, sizes) == pytest.approx(0.125)
    assert book.final(DEV, 0.025, []) == 0


async def test_the_final_cost_of_a_job_matches_its_quote(
    emulator: Emulator, fal: FalClient, book: PriceBook
) -> None:
    emulator.config.job_seconds = 0
    emulator.config.prices = {DEV.endpoint_id: 0.03}
    arguments = DEV.input_model.model_validate(
        {"prompt": "a fox", "num_images": 2, "image_size": {"width": 1536, "height": 1024}}
    )
    quote = await book.quote(DEV, arguments)

    output = await fal.wait(await fal.submit(DEV.endpoint_id, arguments))
    sizes = [(image.width or 0, image.height or 0) for image in output.images]

    assert quote.cost_usd == pytest.approx(0.12)  # 2 megapixels each, 2 images, at fal's 0.03
    assert book.final(DEV, quote.unit_price, sizes) == pytest.approx(quote.cost_usd)


async def test_emulator_pricing_answers_in_fals_shape(emulator: Emulator) -> None:
    ids = f"{DEV.endpoint_id},{ULTRA.endpoint_id},fal-ai/not-a-model"
    async with httpx.AsyncClient(base_url=emulator.url, timeout=5.0) as http:
        anonymous = await http.get("/v1/models/pricing", params={"endpoint_id": ids})
        headers = {"Authorization": f"Key {emulator.key}"}
        answer = await http.get("/v1/models/pricing", params={"endpoint_id": ids}, headers=headers)
        emulator.config.pricing_permission = False
        refused = await http.get("/v1/models/pricing", params={"endpoint_id": ids}, headers=headers)

    assert anonymous.status_code == 401
    assert answer.status_code == 200
    assert answer.json() == {
        "prices": [
            {"endpoint_id": DEV.endpoint_id, "unit_price": 0.025, "unit": "image", "currency": "USD"},
            {"endpoint_id": ULTRA.endpoint_id, "unit_price": 0.06, "unit": "image", "currency": "USD"},
        ],
        "next_cursor": None,
        "has_more": False,
    }
    assert refused.status_code == 403
    assert refused.json() == {"detail": "This API key does not have permission to read pricing."}
    assert emulator.counters["pricing"] == 3


async def test_the_client_reads_prices_and_maps_a_refusal(emulator: Emulator, fal: FalClient) -> None:
    emulator.config.prices = {ULTRA.endpoint_id: 0.07, DEV.endpoint_id: 0.025}

    prices = await fal.platform.prices([ULTRA.endpoint_id, DEV.endpoint_id, KONTEXT.endpoint_id])
    assert prices == {ULTRA.endpoint_id: 0.07, DEV.endpoint_id: 0.025}
    assert await fal.platform.prices([]) == {}
    assert emulator.counters["pricing"] == 1

    emulator.config.pricing_permission = False
    with pytest.raises(AuthenticationError) as refused:
        await fal.platform.prices([ULTRA.endpoint_id])
    assert refused.value.status_code == 403
    assert "permission to read pricing" in str(refused.value)
    assert emulator.key.split(":")[1] not in str(refused.value)


async def test_a_pricing_api_that_does_not_answer_in_time_gives_way_to_the_list_price(
    emulator: Emulator, fal: FalClient
) -> None:
    """A generation is never held up for long by a price: fal's pricing API slow, the list price is used."""
    emulator.config.prices = {**emulator.config.prices, "fal-ai/flux-pro/v1.1-ultra": 0.07}
    emulator.inject("pricing", "slow", count=1, delay=5)
    book = PriceBook(lambda: fal, ask_seconds=0.3, retry_seconds=0)
    ultra = MODELS["fal-ai/flux-pro/v1.1-ultra"]
    with anyio.fail_after(3):
        price, source = await book.unit_price(ultra)
    assert (price, source) == (0.06, "built-in price list")
    assert await book.unit_price(ultra) == (0.07, "fal pricing API")  # asked again, answered at once


async def test_a_model_without_a_published_price_is_quoted_from_fal_or_not_at_all(
    emulator: Emulator, fal: FalClient
) -> None:
    finetuned = get_model("fal-ai/flux-pro/v1.1-ultra-finetuned")
    arguments = finetuned.input_model.model_validate(
        {"prompt": "x", "finetune_id": "f", "finetune_strength": 1, "num_images": 2}
    )
    assert finetuned.endpoint_id not in emulator.config.prices  # fal publishes no price for it
    with pytest.raises(JobError, match="no published price"):
        await PriceBook(lambda: fal).quote(finetuned, arguments)

    emulator.config.prices = {**emulator.config.prices, finetuned.endpoint_id: 0.07}
    quote = await PriceBook(lambda: fal).quote(finetuned, arguments)
    assert quote.cost_usd == pytest.approx(0.14) and quote.source == "fal pricing API"


async def test_a_tiered_price_from_fal_scales_the_further_megapixels_too(
    emulator: Emulator, book: PriceBook
) -> None:
    edit = get_model("fal-ai/flux-2-pro/edit")
    emulator.config.prices = {**emulator.config.prices, edit.endpoint_id: 0.06}  # twice the list price
    arguments = edit.input_model.model_validate({"prompt": "x", "image_urls": ["https://a/b.png"]})

    quote = await book.quote(edit, arguments, [(1024, 1024)])

    # One megapixel out, one in: the first at fal's 0.06, the second at twice the list's 0.015.
    assert quote.cost_usd == pytest.approx(0.09) and quote.input_megapixels == 1
