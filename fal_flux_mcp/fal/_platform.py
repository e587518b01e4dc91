"""fal's platform API (``api.fal.ai/v1``): what the account's key may read about its own requests.

Only the request history is used: it is how a submission whose answer was lost (a crash between fal's
answer and the journal, a dropped connection) is found again, by its input, instead of being paid for
a second time. Keys may lack the permission to read it; fal then answers 403.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import pydantic

from fal_flux_mcp.fal._exceptions import FalError
from fal_flux_mcp.fal._responses import json_body
from fal_flux_mcp.fal._transport import FalTransport
from fal_flux_mcp.fal._types import HistoryItem
from fal_flux_mcp.fal._urls import FalHosts

#: Pages read at most for one look-up; a window of a few minutes holds far fewer requests.
_MAX_PAGES = 20


class Platform:
    """Reads of fal's platform API, through the client's one transport (key, retries, error mapping)."""

    def __init__(self, transport: FalTransport, hosts: FalHosts) -> None:
        self._transport = transport
        self._hosts = hosts

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
        for _ in range(_MAX_PAGES):
            response = await self._transport.send(
                "GET", self._hosts.request_history_url(), phase="status", params=params
            )
            body = json_body(response)
            if not isinstance(body, Mapping) or not isinstance(body.get("items"), list):
                raise FalError("fal's request history answered without a list of items")
            for item in body["items"]:
                try:
                    items.append(HistoryItem.model_validate(item))
                except pydantic.ValidationError:  # an item without a request id cannot be matched
                    continue
            cursor = body.get("next_cursor")
            if not body.get("has_more") or not isinstance(cursor, str):
                break
            params["cursor"] = cursor
        return items
