"""fal's platform API (``api.fal.ai/v1``): what the account's key may read about its own requests.

Two reads are used. The request history is how a submission whose answer was lost (a crash between
fal's answer and the journal, a dropped connection) is found again, by its input, instead of being paid
for a second time. The pricing is what the account pays per unit now, which may differ from the list
prices the registry carries. Keys may lack the permission for either; fal then answers 403.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import pydantic

from fal_flux_mcp.fal._exceptions import FalError
from fal_flux_mcp.fal._responses import json_body
from fal_flux_mcp.fal._transport import FalTransport
from fal_flux_mcp.fal._types import HistoryItem
from fal_flux_mcp.fal._urls import FalHosts

#: Pages read at most for one look-up; a window of a few minutes holds far fewer requests.
_MAX_PAGES = 20
#: The only currency prices are taken in: every cost fal-flux-mcp shows is in USD.
_CURRENCY = "USD"


class Platform:
    """Reads of fal's platform API, through the client's one transport (key, retries, error mapping)."""

    def __init__(self, transport: FalTransport, hosts: FalHosts) -> None:
        self._transport = transport
        self._hosts = hosts

    async def _pages(self, url: str, params: dict[str, str], key: str, what: str) -> AsyncIterator[list[Any]]:
        """Each page's list under ``key``, following ``next_cursor`` while ``has_more`` (at most 20 pages)."""
        params = dict(params)
        for _ in range(_MAX_PAGES):
            response = await self._transport.send("GET", url, phase="status", params=params)
            body = json_body(response)
            if not isinstance(body, Mapping) or not isinstance(body.get(key), list):
                raise FalError(f"fal's {what} answered without a list of {key}")
            yield body[key]
            cursor = body.get("next_cursor")
            if not body.get("has_more") or not isinstance(cursor, str):
                return
            params["cursor"] = cursor

    async def request_history(
        self, endpoint_id: str, *, start: datetime, end: datetime, payloads: bool = True, page_size: int = 100
    ) -> list[HistoryItem]:
        """The account's requests to ``endpoint_id`` sent between ``start`` and ``end``, with their inputs.

        Raises ``FalError`` like any read; a key without the permission gets its 403 as an
        ``AuthenticationError`` with ``status_code`` 403.
        """
        params: dict[str, str] = {
            "endpoint_id": endpoint_id,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "limit": str(page_size),
        }
        if payloads:
            params["expand"] = "payloads"
        items: list[HistoryItem] = []
        async for page in self._pages(self._hosts.request_history_url(), params, "items", "request history"):
            for item in page:
                try:
                    items.append(HistoryItem.model_validate(item))
                except pydantic.ValidationError:  # an item without a request id cannot be matched
                    continue
        return items

    async def prices(self, endpoint_ids: Sequence[str]) -> dict[str, float]:
        """fal's current USD unit price of each of ``endpoint_ids``, asked for in one request.

        The unit itself is not returned: fal says ``image`` even for models billed per megapixel, so
        the unit stays the registry's. Ids fal does not price, entries in another currency and
        malformed entries are left out rather than failing the whole answer. Raises ``FalError`` like
        any read; a key without the permission gets its 403 as an ``AuthenticationError``.
        """
        ids = list(dict.fromkeys(endpoint_ids))
        if not ids:
            return {}
        params: dict[str, str] = {"endpoint_id": ",".join(ids)}
        prices: dict[str, float] = {}
        async for page in self._pages(self._hosts.pricing_url(), params, "prices", "pricing API"):
            for item in page:
                if (entry := _usd_price(item)) is not None:
                    prices[entry[0]] = entry[1]
        return prices


def _usd_price(item: object) -> tuple[str, float] | None:
    """``(endpoint_id, unit_price)`` of one pricing entry, or None if it is not a usable USD price."""
    if not isinstance(item, Mapping):
        return None
    endpoint_id, price, currency = item.get("endpoint_id"), item.get("unit_price"), item.get("currency")
    if not isinstance(endpoint_id, str) or not endpoint_id:
        return None
    if not isinstance(currency, str) or currency.upper() != _CURRENCY:
        return None
    if isinstance(price, bool) or not isinstance(price, int | float):
        return None
    if not math.isfinite(price) or price < 0:
        return None
    return endpoint_id, float(price)
