"""What a call costs: fal's current unit prices when the key may read them, the registry's otherwise.

The registry carries fal's published list prices, but an account may pay other prices (fal changes
them, some accounts have their own). fal's pricing API says what this account pays, so quotes use it
when they can. It is read for every registry model in one request and kept for a day: prices change
rarely, and a quote must not cost a round trip to fal on every call. When the key may not read it
(401/403, a per-operation permission), or fal cannot be reached, the list price is used and the quote
says so, rather than failing a generation over an estimate.

Only the unit price comes from fal: its pricing API says ``image`` even for models billed per
megapixel, so the unit stays the registry's. The arithmetic is the registry's too
(``ModelInfo.estimate_cost`` before, ``ModelInfo.final_cost`` after), so quote and cost agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio

from fal_flux_mcp.fal import FalError, MissingCredentialsError
from fal_flux_mcp.models import FalInput
from fal_flux_mcp.registry import MODELS, ModelInfo, PriceUnit
from fal_flux_mcp.server._errors import JobError

if TYPE_CHECKING:
    from fal_flux_mcp.fal import FalClient

logger = logging.getLogger("fal_flux_mcp.server")

#: The longest a quote waits for fal's pricing API before it uses the list price.
_ASK_SECONDS = 5.0

PriceSource = Literal["fal pricing API", "built-in price list"]
FROM_FAL: PriceSource = "fal pricing API"
BUILT_IN: PriceSource = "built-in price list"

#: After fal failed for another reason than the key's permission, how long before it is asked again:
#: often enough to pick fal's prices up once it is back, rarely enough not to add a failing request
#: (with its retries) to every call while it is down.
_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class Quote:
    """The estimated cost of a call, and what it rests on, for the user to see before paying."""

    cost_usd: float
    unit_price: float
    unit: PriceUnit
    source: PriceSource
    input_megapixels: int = 0


class PriceBook:
    """The unit prices of the registry's models, read from fal at most once per ``ttl_seconds``.

    ``fal`` is called only when a price is needed, so a server that never quotes never builds a
    client. ``retry_seconds`` is how long a failure other than a refused key is remembered.
    """

    def __init__(
        self,
        fal: Callable[[], FalClient],
        *,
        ttl_seconds: float = 86400,
        retry_seconds: float = _RETRY_SECONDS,
        ask_seconds: float = _ASK_SECONDS,
    ) -> None:
        self._fal = fal
        self._ask_seconds = ask_seconds
        self._ttl = ttl_seconds
        self._retry = retry_seconds
        self._lock = anyio.Lock()
        #: fal's last answer; empty until one arrives, and after a refusal (the list prices then apply).
        self._prices: dict[str, float] = {}
        #: ``time.monotonic()`` after which fal is asked again; None before the first ask.
        self._next_ask: float | None = None

    async def unit_price(self, model: ModelInfo) -> tuple[float | None, PriceSource]:
        """``model``'s USD price per unit (its ``price_unit``), and where that price comes from.

        None when fal publishes no price for it and its pricing API cannot tell either.
        """
        prices = await self._current()
        price = prices.get(model.endpoint_id)
        if price is None:  # fal not asked successfully, or it does not price this model
            return model.price_usd, BUILT_IN
        return price, FROM_FAL

    async def quote(
        self, model: ModelInfo, arguments: FalInput, input_sizes: Sequence[tuple[int, int]] = ()
    ) -> Quote:
        """The estimate shown before submitting: the images ``arguments`` ask for, at the current price.

        ``input_sizes``: the input images' sizes, for the models whose output or price follows them.
        A model without a known price is a ``JobError``: nothing may be spent on an unknown cost.
        """
        unit_price, source = await self.unit_price(model)
        if unit_price is None:
            raise JobError(
                f"{model.endpoint_id} ({model.title}) has no published price, and fal's pricing API did not "
                "give one (the key may lack the permission to read prices), so its cost cannot be "
                "checked against your limits. Nothing was sent to fal. Use another model, or a key that "
                "may read fal's pricing."
            )
        return Quote(
            cost_usd=model.estimate_cost(arguments, unit_price, input_sizes),
            unit_price=unit_price,
            unit=model.price_unit,
            source=source,
            input_megapixels=model.billed_input_megapixels(input_sizes),
        )

    def final(
        self,
        model: ModelInfo,
        unit_price: float,
        sizes: Sequence[tuple[int, int]],
        input_megapixels: int = 0,
    ) -> float:
        """USD for the images actually returned (``sizes``: their width and height), at ``unit_price``.

        Takes the price the quote used rather than asking again, so that a price change between
        submit and result does not make the cost disagree with what the user accepted.
        """
        return model.final_cost(sizes, unit_price, input_megapixels)

    async def _current(self) -> dict[str, float]:
        """fal's prices, asking fal if they are due; concurrent first callers share one request."""
        if not self._due():
            return self._prices
        async with self._lock:
            if self._due():  # not already asked by the caller this one waited for
                await self._ask()
            return self._prices

    def _due(self) -> bool:
        return self._next_ask is None or time.monotonic() >= self._next_ask

    async def _ask(self) -> None:
        try:
            # A price is not worth holding up a generation for: a slow or failing pricing API (its
            # retries included) gives way to the list price after a few seconds.
            with anyio.fail_after(self._ask_seconds):
                prices = await self._fal().platform.prices(list(MODELS))
        except TimeoutError:
            self._next_ask = time.monotonic() + self._retry
            logger.info(
                "fal's pricing did not answer within %.0f s; quoting list prices for now", _ASK_SECONDS
            )
            return
        except FalError as exc:
            if exc.status_code in (401, 403) or isinstance(exc, MissingCredentialsError):
                # The key lacks the permission; that will not change within the day.
                self._prices = {}
                self._next_ask = time.monotonic() + self._ttl
                logger.info("fal's pricing cannot be read with this key; quoting list prices: %s", exc)
            else:
                # Keep an earlier answer of fal's if there is one: still closer than the list.
                self._next_ask = time.monotonic() + self._retry
                logger.info(
                    "could not read fal's pricing (asking again in %.0f s); quoting %s: %s",
                    self._retry,
                    "its last known prices" if self._prices else "list prices",
                    exc,
                )
            return
        self._prices = prices
        self._next_ask = time.monotonic() + self._ttl
        missing = [endpoint_id for endpoint_id in MODELS if endpoint_id not in prices]
        if missing:
            logger.info("fal's pricing has no price for %s; quoting list prices for them", ", ".join(missing))
