"""FLUX_MCP_KEEP_DAYS: old finished jobs leave the state folder; money, unfinished jobs and files stay."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fal_flux_mcp.server._journal import Journal
from fal_flux_mcp.server._ledger import Ledger, today_and_this_month
from fal_flux_mcp.server._records import LOCAL_OWNER as LOCAL
from fal_flux_mcp.server._retention import prune
from fal_flux_mcp.settings import Settings
from tests.test_journal import record

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)


def old_preview(previews: Path, name: str, when: datetime) -> Path:
    previews.mkdir(parents=True, exist_ok=True)
    path = previews / name
    path.write_bytes(b"\xff\xd8\xff preview")
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def test_old_finished_jobs_and_previews_go_and_everything_else_stays(
    tmp_path: Path, journal: Journal
) -> None:
    journal.add(record("old-done", status="completed", created_at=OLD, cost_usd=0.06, charge="final"))
    journal.add(
        record("old-failed", status="failed", created_at=OLD, cost_usd=0.06, charge="possibly_charged")
    )
    journal.add(record("old-running", status="in_progress", created_at=OLD, cost_usd=0.06))
    journal.add(record("old-unsaved", status="completed", created_at=OLD, cost_usd=0.06, charge="final"))
    journal.update("old-unsaved", pending_save=True)
    journal.add(record("recent", status="completed", created_at=NOW, cost_usd=0.06, charge="final"))
    previews = tmp_path / "previews"
    gone = old_preview(previews, "old-done-0.jpg", OLD)
    kept = old_preview(previews, "recent-0.jpg", NOW)
    saved_image = tmp_path / "out" / "20251020-101010_a-lighthouse_flux-pro-v1.1-ultra_1_0.jpg"
    saved_image.parent.mkdir()
    saved_image.write_bytes(b"the user's image")
    os.utime(saved_image, (OLD.timestamp(), OLD.timestamp()))

    assert prune(journal, previews, timedelta(days=30)) == (2, 1)

    assert journal.get("old-done") is None and journal.get("old-failed") is None
    assert journal.get("old-running") is not None, "a job fal may still run is followed, however old"
    assert journal.get("old-unsaved") is not None, "an image still to save is kept until it is saved"
    assert journal.get("recent") is not None
    assert not gone.exists() and kept.exists()
    assert saved_image.read_bytes() == b"the user's image"


def test_pruning_this_months_jobs_keeps_todays_spend_and_budget(tmp_path: Path, journal: Journal) -> None:
    settings = Settings(_env_file=None, state_dir=tmp_path, output_dir=tmp_path / "out", daily_budget_usd=1.0)
    ledger = Ledger(journal, settings)
    day, month = today_and_this_month(NOW)
    earlier = day.start + (NOW - day.start) / 2  # today, whatever the hour the test runs at
    for number in range(5):
        journal.add(
            record(f"done-{number}", status="completed", created_at=earlier, cost_usd=0.1, charge="final")
        )
    journal.add(record("cancelled", status="cancelled", created_at=earlier, cost_usd=0.1, charge="released"))
    before = (
        ledger.spent(day, LOCAL),
        ledger.spent(month, LOCAL),
        ledger.left(LOCAL),
        ledger.report(LOCAL).periods,
    )

    assert prune(journal, tmp_path / "previews", (NOW - earlier) / 2, now=NOW) == (6, 0)

    assert journal.recent(10) == []
    after = (
        ledger.spent(day, LOCAL),
        ledger.spent(month, LOCAL),
        ledger.left(LOCAL),
        ledger.report(LOCAL).periods,
    )
    assert after == before
    assert ledger.spent(day, LOCAL) == pytest.approx(0.5)
    assert ledger.over_limit(0.6, LOCAL) is not None and ledger.over_limit(0.4, LOCAL) is None


@pytest.mark.parametrize(("value", "days"), [("off", None), ("0.5", 0.5), (None, 30.0)])
def test_keep_days_setting(value: str | None, days: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is not None:
        monkeypatch.setenv("FLUX_MCP_KEEP_DAYS", value)
    assert Settings(_env_file=None).keep_days == days
