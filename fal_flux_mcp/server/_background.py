"""Work that outlives the tool call that started it: following a job, saving its images, finding it again.

Each piece of work is one task in the server's task group, started at most once per name, and tried
again with a growing delay for as long as fal (or the disk) keeps failing: a passing fault never ends
it, only success or its time running out does. Whatever else goes wrong is logged, never allowed to
stop the server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from fal_flux_mcp.fal import FalError

logger = logging.getLogger("fal_flux_mcp.server")

#: One attempt at the work: True when it is done, False (or a ``FalError``) to try again later.
Attempt = Callable[[], Awaitable[bool]]


class Background:
    """Runs named, retried work in the server's task group (nothing runs before one is given)."""

    def __init__(self) -> None:
        self.task_group: TaskGroup | None = None
        self._running: set[str] = set()

    def start(
        self,
        name: str,
        attempt: Attempt,
        *,
        first_delay: float,
        max_delay: float,
        wait_first: bool = False,
        give_up_after: float | None = None,
    ) -> None:
        """Run ``attempt`` until it says it is done, waiting ``first_delay``, doubling to ``max_delay``."""
        if self.task_group is None or name in self._running:
            return
        self._running.add(name)
        self.task_group.start_soon(
            self._run, name, attempt, first_delay, max_delay, wait_first, give_up_after, name=name
        )

    def running(self, name: str) -> bool:
        """Whether the work of this name is running (or waiting to try again)."""
        return name in self._running

    async def _run(
        self,
        name: str,
        attempt: Attempt,
        delay: float,
        max_delay: float,
        wait_first: bool,
        give_up_after: float | None,
    ) -> None:
        deadline = None if give_up_after is None else anyio.current_time() + give_up_after
        try:
            if wait_first:
                await anyio.sleep(delay)
            while True:
                try:
                    if await attempt():
                        return
                    logger.info("%s: not done yet; trying again in %.0f s", name, delay)
                except FalError as exc:
                    logger.info("%s: %s; trying again in %.0f s", name, exc, delay)
                if deadline is not None and anyio.current_time() + delay > deadline:
                    logger.warning("%s: gave up after %.0f s", name, give_up_after)
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, max_delay)
        except Exception:  # it runs in the server's task group: a failure here must not stop the server
            logger.exception("%s stopped", name)
        finally:
            self._running.discard(name)
