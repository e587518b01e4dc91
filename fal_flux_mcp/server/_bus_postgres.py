"""Change notifications across replicas: a ``SubscriptionBus`` on PostgreSQL's LISTEN/NOTIFY.

A client listening (``subscriptions/listen``) on one replica must hear that a job finished on another.
Every replica sharing the journal's database publishes its events with ``NOTIFY`` on one channel and
keeps one connection ``LISTEN``ing there, which hands the events of the others to its local listeners.
An event is delivered to the publishing replica's own listeners at once and its echo from the
database is dropped, so each replica delivers each event exactly once, and its own even while the
database is away.

Delivery is fire-and-forget, as the SDK's bus is: the listen connection is made again when lost (a
database restart), and events published meanwhile are not replayed. Clients refetch on their next
look, as they do after a dropped listen stream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
from anyio.abc import TaskStatus
from mcp.server.subscriptions import InMemorySubscriptionBus, ServerEvent
from mcp.shared.subscriptions import event_from_wire, event_to_notification

from fal_flux_mcp.server._events import owner_of, with_owner

logger = logging.getLogger("fal_flux_mcp.server")

#: The channel every replica of one database publishes on and listens to.
CHANNEL = "fal_flux_mcp_events"
#: The first and the longest wait before connecting again after the listen connection was lost.
_RECONNECT_FIRST = 0.2
_RECONNECT_MAX = 10.0


def encode(event: ServerEvent, origin: str) -> str:
    """An event as a NOTIFY payload: the MCP notification it becomes, whose it is, and which replica sent it."""
    notification = event_to_notification(event, {}).model_dump(mode="json", by_alias=True, exclude_none=True)
    params = {key: value for key, value in (notification.get("params") or {}).items() if key != "_meta"}
    return json.dumps(
        {"origin": origin, "owner": owner_of(event), "method": notification["method"], "params": params}
    )


def decode(payload: str) -> tuple[str, ServerEvent] | None:
    """The replica and event a payload carries; None for a payload that is not one of ours."""
    try:
        message = json.loads(payload)
        event = event_from_wire(message["method"], message.get("params"))
        origin = message["origin"]
        owner = message.get("owner")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if event is None or not isinstance(origin, str) or not isinstance(owner, str | None):
        return None
    return origin, with_owner(event, owner)


class PostgresSubscriptionBus:
    """Fans events out to this replica's listeners and, through the database, to every other replica's."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._local = InMemorySubscriptionBus()
        #: Tells this replica's own events from the others' when they come back from the database.
        self.origin = secrets.token_hex(8)
        self._publisher: psycopg.AsyncConnection[Any] | None = None
        self._publish_lock = anyio.Lock()

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Register a listener of this replica (see ``SubscriptionBus``)."""
        return self._local.subscribe(listener)

    async def publish(self, event: ServerEvent) -> None:
        """Deliver ``event`` here at once, and to every other replica through the database."""
        await self._local.publish(event)
        payload = encode(event, self.origin)
        async with self._publish_lock:
            for attempt in range(2):  # a connection the database dropped is made again, once
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = await psycopg.AsyncConnection.connect(
                            self._url, autocommit=True, connect_timeout=10
                        )
                    await self._publisher.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                    return
                except psycopg.Error as exc:
                    await self._close_publisher()
                    if attempt:  # a notification is not worth failing the work that announced it
                        logger.warning("could not tell the other servers about %s: %s", event, exc)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hand the other replicas' events to this replica's listeners, until cancelled.

        ``task_status`` is told once the first listen connection is up (or failed: it keeps trying),
        so a server started with ``TaskGroup.start`` hears every event published after it started.
        """
        delay = _RECONNECT_FIRST
        started = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=10
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    if not started:
                        started = True
                        task_status.started()
                    delay = _RECONNECT_FIRST
                    async for notice in connection.notifies():
                        await self._deliver(notice.payload)
            except psycopg.Error as exc:
                logger.warning("lost the notification channel (%s); listening again in %.1f s", exc, delay)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX)

    async def _deliver(self, payload: str) -> None:
        decoded = decode(payload)
        if decoded is None:
            logger.warning("ignored a notification that is not fal-flux-mcp's: %.100s", payload)
            return
        origin, event = decoded
        if origin != self.origin:  # this replica's own were delivered when published
            await self._local.publish(event)

    async def aclose(self) -> None:
        """Close the publishing connection (the listen connection ends with ``run``)."""
        await self._close_publisher()

    async def _close_publisher(self) -> None:
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            with contextlib.suppress(psycopg.Error):
                await publisher.close()
