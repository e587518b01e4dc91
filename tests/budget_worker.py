"""One server process reserving money on a shared PostgreSQL journal, for the cross-process budget test.

A module of its own, importing only the journal and the ledger, so that ten freshly spawned processes
start quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fal_flux_mcp.server._journal import SubmitIntent
from fal_flux_mcp.server._journal_postgres import PostgresJournal
from fal_flux_mcp.server._ledger import Ledger
from fal_flux_mcp.settings import Settings

ULTRA = "fal-ai/flux-pro/v1.1-ultra"


def reserve(url: str, folder: str, number: int, start: Any, results: Any, owner: str = "local") -> None:
    """One server process: open the journal, wait for the others, then try to reserve $0.06 for ``owner``."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        state_dir=Path(folder) / "state",
        output_dir=Path(folder) / "out",
        daily_budget_usd=0.18,
    )
    with PostgresJournal(url) as journal:
        ledger = Ledger(journal, settings)
        start.wait()
        intent = SubmitIntent(
            intent_id=f"intent-{number}", owner=owner, endpoint_id=ULTRA, arguments={}, cost_usd=0.06
        )
        results.put((number, ledger.reserve(intent, approved=False)))
