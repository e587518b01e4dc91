"""Spend under the user's control: limits, the user's yes through elicitation, and a ledger that holds.

Every call goes through a real MCP client (in both protocol eras where elicitation is involved) to the
server, which talks to the emulator; the emulator's submit counter says whether money went out.
FLUX1.1 [pro] ultra costs $0.06 per image at the emulator's (fal's list) price.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult, ElicitResult
from pydantic import SecretStr

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.server import build_server
from fal_flux_mcp.settings import Settings

pytestmark = pytest.mark.anyio

ULTRA = {"prompt": "a lighthouse at dusk", "model": "fal-ai/flux-pro/v1.1-ultra"}
MODES = ["auto", "legacy"]


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def answering(action: str, approve: bool | None = None, asked: list[str] | None = None) -> Any:
    """An elicitation callback that answers every question the same way, and notes each question."""

    async def callback(context: object, params: Any) -> ElicitResult:
        if asked is not None:
            asked.append(params.message)
        content = {"approve": approve} if approve is not None else None
        return ElicitResult(action=action, content=content)  # type: ignore[arg-type]

    return callback


@pytest.fixture
def settings(settings: Settings, backend: str, request: pytest.FixtureRequest) -> Settings:
    """The conftest settings, with the journal on each backend in turn."""
    if backend == "postgres":
        settings.database_url = SecretStr(request.getfixturevalue("database_url"))
    return settings


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_a_call_over_the_per_call_limit_is_not_submitted_where_the_client_cannot_ask(
    settings: Settings, emulator: Emulator
) -> None:
    settings.max_usd_per_call = 0.10
    async with Client(build_server(settings)) as client:
        refused = await client.call_tool("generate_image", {**ULTRA, "num_images": 2})
        within = await client.call_tool("generate_image", {**ULTRA, "model": "fal-ai/flux/schnell"})
    text = text_of(refused)
    assert refused.is_error and "FLUX_MCP_MAX_USD_PER_CALL" in text and "nothing was spent" in text
    assert "cannot ask the user" in text and "assistant cannot approve" in text
    assert not within.is_error
    assert emulator.counters["submit"] == 1


async def test_the_user_approves_through_elicitation(
    settings: Settings, emulator: Emulator, mode: str
) -> None:
    emulator.config.job_seconds = 0.05
    settings.max_usd_per_call = 0.10
    asked: list[str] = []
    async with Client(
        build_server(settings), mode=mode, elicitation_callback=answering("accept", True, asked)
    ) as client:
        result = await client.call_tool("generate_image", {**ULTRA, "num_images": 2})
    assert not result.is_error, text_of(result)
    assert result.structured_content["status"] == "completed"
    (question,) = asked
    assert "$0.12" in question and "2 image(s)" in question and "FLUX_MCP_MAX_USD_PER_CALL" in question
    assert emulator.counters["submit"] == 1


@pytest.mark.parametrize(("action", "approve"), [("accept", False), ("decline", None), ("cancel", None)])
async def test_a_declined_or_dismissed_question_spends_nothing(
    settings: Settings, emulator: Emulator, mode: str, action: str, approve: bool | None
) -> None:
    settings.max_usd_per_call = 0.10
    async with Client(
        build_server(settings), mode=mode, elicitation_callback=answering(action, approve)
    ) as client:
        result = await client.call_tool("submit_job", {**ULTRA, "num_images": 2})
    assert result.is_error and "nothing was spent" in text_of(result).lower()
    assert emulator.counters["submit"] == 0


async def test_the_daily_budget_counts_what_was_spent_today_even_across_a_restart(
    settings: Settings, emulator: Emulator
) -> None:
    settings.daily_budget_usd = 0.15
    async with Client(build_server(settings)) as client:
        for _ in range(2):
            assert not (await client.call_tool("submit_job", ULTRA)).is_error
    async with Client(build_server(settings)) as client:  # a restart: the journal keeps the day's total
        third = await client.call_tool("submit_job", ULTRA)
    assert (
        third.is_error
        and "FLUX_MCP_DAILY_BUDGET_USD" in text_of(third)
        and "$0.12 spent today" in text_of(third)
    )
    assert emulator.counters["submit"] == 2


async def test_the_monthly_budget_is_a_limit_too(settings: Settings, emulator: Emulator) -> None:
    settings.monthly_budget_usd = 0.05
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("submit_job", ULTRA)
    assert result.is_error and "FLUX_MCP_MONTHLY_BUDGET_USD" in text_of(result)
    assert emulator.counters["submit"] == 0


async def test_max_cost_usd_lowers_the_limit_but_never_raises_it(
    settings: Settings, emulator: Emulator
) -> None:
    settings.max_usd_per_call = 0.10
    asked: list[str] = []
    async with Client(
        build_server(settings), mode="legacy", elicitation_callback=answering("decline", asked=asked)
    ) as client:
        lowered = await client.call_tool("submit_job", {**ULTRA, "max_cost_usd": 0.01})
        raised = await client.call_tool("submit_job", {**ULTRA, "num_images": 4, "max_cost_usd": 100})
    assert lowered.is_error and "max_cost_usd" in text_of(lowered)
    assert len(asked) == 1  # only the call over the user's own limit was asked about (and declined)
    assert raised.is_error and emulator.counters["submit"] == 0


async def test_ten_concurrent_calls_against_a_budget_for_three_submit_three(
    settings: Settings, emulator: Emulator
) -> None:
    settings.daily_budget_usd = 0.18
    results: list[CallToolResult] = []
    async with Client(build_server(settings)) as client:

        async def one(number: int) -> None:
            results.append(await client.call_tool("submit_job", {**ULTRA, "seed": number}))

        async with anyio.create_task_group() as group:
            for number in range(10):
                group.start_soon(one, number)
    assert sum(not result.is_error for result in results) == 3
    assert emulator.counters["submit"] == 3


async def test_a_job_cancelled_while_queued_gives_its_reservation_back(
    settings: Settings, emulator: Emulator
) -> None:
    settings.daily_budget_usd = 0.10
    emulator.config.queue_depth = 50
    async with Client(build_server(settings)) as client:
        first = await client.call_tool("submit_job", ULTRA)
        blocked = await client.call_tool("submit_job", ULTRA)
        await client.call_tool("cancel_job", {"job_id": first.structured_content["job_id"]})
        after = await client.call_tool("submit_job", ULTRA)
    assert blocked.is_error and not after.is_error
    assert emulator.counters["submit"] == 2


async def test_a_5xx_at_submit_reserves_nothing(settings: Settings, emulator: Emulator) -> None:
    settings.daily_budget_usd = 0.10
    emulator.inject("submit", "502_nginx", count=20)  # refused at fal's door: never queued
    async with Client(build_server(settings)) as client:
        failed = await client.call_tool("submit_job", ULTRA)
        emulator.clear_faults()
        after = await client.call_tool("submit_job", ULTRA)
    assert failed.is_error and not after.is_error


async def test_results_carry_the_cost_its_source_the_approval_and_what_is_left(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    emulator.config.prices = {**emulator.config.prices, "fal-ai/flux-pro/v1.1-ultra": 0.07}
    async with Client(
        build_server(settings), mode="legacy", elicitation_callback=answering("accept", True)
    ) as client:
        result = await client.call_tool("generate_image", {**ULTRA, "num_images": 2})
        settings.max_usd_per_call = 0.10  # the next one is asked about, and approved
        approved = await client.call_tool("submit_job", {**ULTRA, "num_images": 2})
    data = result.structured_content
    assert data["cost_usd"] == pytest.approx(0.14) and data["price_source"] == "fal pricing API"
    assert data["approval"] == "within the limits"
    assert data["budget_left_today_usd"] == pytest.approx(5 - 0.14)
    assert "left of today's budget" in text_of(result)
    assert approved.structured_content["approval"] == "approved by the user"


async def test_without_the_pricing_permission_the_built_in_prices_are_used_and_said(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.pricing_permission = False
    async with Client(build_server(settings)) as client:
        listed = await client.call_tool("list_models", {})
        submitted = await client.call_tool("submit_job", ULTRA)
    ultra = next(m for m in listed.structured_content["models"] if m["id"] == ULTRA["model"])
    assert ultra["price_usd"] == 0.06 and ultra["price_source"] == "built-in price list"
    assert submitted.structured_content["price_source"] == "built-in price list"


async def test_get_spend_shows_a_day_by_model_with_final_reserved_and_released(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    async with Client(build_server(settings)) as client:
        await client.call_tool("generate_image", {**ULTRA, "num_images": 2})  # final: 0.12
        await client.call_tool("generate_image", {"prompt": "x", "model": "fal-ai/flux/schnell"})  # 0.003
        emulator.config.queue_depth = 50
        queued = await client.call_tool("submit_job", ULTRA)
        await client.call_tool("cancel_job", {"job_id": queued.structured_content["job_id"]})  # released 0.06
        report = await client.call_tool("get_spend", {})
        resource = await client.read_resource("flux://spend")
    today = report.structured_content["periods"][0]
    assert today["period"] == "today"
    assert today["total_usd"] == pytest.approx(0.123) and today["final_usd"] == pytest.approx(0.123)
    assert today["released_usd"] == pytest.approx(0.06)
    assert today["by_model"] == {"fal-ai/flux-pro/v1.1-ultra": 0.12, "fal-ai/flux/schnell": 0.003}
    budgets = report.structured_content["budgets"]
    assert budgets["daily_budget_usd"] == 5 and budgets["left_today_usd"] == pytest.approx(5 - 0.123)
    assert report.structured_content["most_expensive"][0]["cost_usd"] == 0.12
    assert '"total_usd": 0.123' in resource.contents[0].text


async def test_no_answer_in_time_spends_nothing(settings: Settings, emulator: Emulator) -> None:
    settings.max_usd_per_call = 0.01
    settings.approval_timeout_seconds = 0.3

    async def never_answers(context: object, params: Any) -> ElicitResult:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with Client(build_server(settings), mode="legacy", elicitation_callback=never_answers) as client:
        with anyio.fail_after(10):
            result = await client.call_tool("submit_job", ULTRA)
    assert result.is_error and "did not answer" in text_of(result) and "nothing was spent" in text_of(result)
    assert emulator.counters["submit"] == 0


async def test_fal_failures_release_or_keep_the_reservation_as_fal_bills_them(
    settings: Settings, emulator: Emulator
) -> None:
    emulator.config.job_seconds = 0.05
    async with Client(build_server(settings)) as client:
        refused = await client.call_tool("generate_image", {**ULTRA, "prompt": "something forbidden"})  # 422
        crashed = await client.call_tool("generate_image", {**ULTRA, "prompt": "a runner-crash"})  # 5xx
        report = await client.call_tool("get_spend", {})
    assert refused.is_error and crashed.is_error
    today = report.structured_content["periods"][0]
    assert today["possibly_charged_usd"] == pytest.approx(0.06)  # fal may bill a 422
    assert today["released_usd"] == pytest.approx(0.06)  # and never bills a 5xx
    assert today["total_usd"] == pytest.approx(0.06)


async def test_a_client_that_declares_elicitation_but_fails_the_question_is_refused_in_words(
    settings: Settings, emulator: Emulator
) -> None:
    settings.max_usd_per_call = 0.01

    async def broken(context: object, params: Any) -> ElicitResult:
        raise RuntimeError("this client cannot show forms after all")

    async with Client(build_server(settings), mode="legacy", elicitation_callback=broken) as client:
        result = await client.call_tool("submit_job", ULTRA)
    assert result.is_error and "cannot ask the user" in text_of(result)
    assert emulator.counters["submit"] == 0
