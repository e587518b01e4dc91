"""Change notifications that belong to a user: only that user's listen streams hear them.

A job's ``ResourceUpdated`` and the "your image list changed" that follows it say that someone's job
moved; told to everyone, they would let a user who learned another's job id watch it, and tell every
user when anyone generates. So the server publishes them as ``JobChanged`` and ``ImagesChanged``,
which carry the job's owner, and ``OwnersBus`` (the bus the SDK's listen handler subscribes to) hands
a stream only the events of the user who opened it: the verified token's subject under OAuth, the one
local user without. Events with no owner (none today) go to every stream.

The server's own listeners (waking waits for a job another replica finished) hear everything through
``subscribe_all``. Across replicas, the owner travels with the event (see ``_bus_postgres``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent

from fal_flux_mcp.server._identity import user_for
from fal_flux_mcp.server._records import LOCAL_OWNER

if TYPE_CHECKING:
    from fal_flux_mcp.settings import Settings


@dataclass(frozen=True)
class JobChanged(ResourceUpdated):
    """A job's resource changed; only its owner hears it."""

    owner: str = LOCAL_OWNER


@dataclass(frozen=True)
class ImagesChanged(ResourcesListChanged):
    """A user's image list changed (a job of theirs completed); only they hear it."""

    owner: str = LOCAL_OWNER


def owner_of(event: ServerEvent) -> str | None:
    """Whose event this is; None: everyone's."""
    return event.owner if isinstance(event, JobChanged | ImagesChanged) else None


def with_owner(event: ServerEvent, owner: str | None) -> ServerEvent:
    """``event`` as the owned event it was published as (after it crossed the database)."""
    if owner is None:
        return event
    if isinstance(event, ResourceUpdated):
        return JobChanged(uri=event.uri, owner=owner)
    if isinstance(event, ResourcesListChanged):
        return ImagesChanged(owner=owner)
    return event


class Bus(Protocol):
    """The SDK's ``SubscriptionBus``: what ``OwnersBus`` fans out through."""

    async def publish(self, event: ServerEvent) -> None: ...

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]: ...


class OwnersBus:
    """A ``SubscriptionBus`` whose listen streams hear only their own user's events."""

    def __init__(self, inner: Bus, settings: Settings) -> None:
        self.inner = inner
        self._settings = settings

    async def publish(self, event: ServerEvent) -> None:
        """Deliver ``event`` through the bus underneath (to every replica, on PostgreSQL)."""
        await self.inner.publish(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Register a listen stream, for the user of the request that opened it.

        The SDK's listen handler calls this inside the ``subscriptions/listen`` request, so the
        caller's verified token is at hand. Under OAuth, a stream without one hears no owned event.
        """
        subscriber = user_for(self._settings)

        def deliver(event: ServerEvent) -> None:
            owner = owner_of(event)
            if owner is None or owner == subscriber:
                listener(event)

        return self.inner.subscribe(deliver)

    def subscribe_all(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Register one of the server's own listeners, which hears every user's events."""
        return self.inner.subscribe(listener)
