"""Keeping the state folder about flat: previews and journal entries of old finished jobs are pruned.

``FLUX_MCP_KEEP_DAYS`` (default 30) says how long. Only finished jobs go (completed, failed or
cancelled, with every image saved); a job fal may still be running, or an image still waiting to be
saved, is kept however old. The saved images in the output folder are the user's and are never
touched. What pruned jobs cost stays in the journal as sums per quarter hour, so today's and this
month's spend, and so the budgets, are the same after a prune as before it.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.to_thread

from fal_flux_mcp.server._journal import Journal
from fal_flux_mcp.settings import Settings

logger = logging.getLogger("fal_flux_mcp.server")

#: The longest wait between two prunes, and the longest before the first one after a start.
_MOST_SECONDS_BETWEEN = 3600.0
_FIRST_AFTER = 60.0


def prune(journal: Journal, previews: Path, keep: timedelta, now: datetime | None = None) -> tuple[int, int]:
    """Prune what is older than ``keep``; returns (journal entries, preview files) removed. Blocking."""
    cutoff = (now or datetime.now(UTC)) - keep
    jobs = journal.prune(cutoff.astimezone(UTC).isoformat(timespec="microseconds"))
    files = 0
    if previews.is_dir():
        oldest = cutoff.timestamp()
        for preview in previews.glob("*.jpg"):
            try:
                if preview.stat().st_mtime < oldest:
                    preview.unlink()
                    files += 1
            except OSError:  # removed meanwhile, or not ours to remove: the next prune tries again
                continue
    return jobs, files


async def keep_pruning(settings: Settings, journal: Journal, previews: Path) -> None:
    """Prune now and then for the life of the server (a tenth of the keep time, at most hourly)."""
    if settings.keep_days is None:
        return
    keep = timedelta(days=settings.keep_days)
    every = min(_MOST_SECONDS_BETWEEN, keep.total_seconds() / 10)
    await anyio.sleep(min(every, _FIRST_AFTER))
    while True:
        started = time.monotonic()
        try:
            jobs, files = await anyio.to_thread.run_sync(prune, journal, previews, keep)
        except Exception:  # a failed prune costs disk space, not a job: try again next time
            logger.exception("pruning the state folder failed")
        else:
            if jobs or files:
                logger.info(
                    "pruned %d finished job(s) and %d preview(s) older than %g day(s) in %.0f ms",
                    jobs,
                    files,
                    settings.keep_days,
                    (time.monotonic() - started) * 1000,
                )
        await anyio.sleep(every)
