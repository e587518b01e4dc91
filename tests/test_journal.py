"""The journal keeps every submitted job across restarts, and never stores anything but job data."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from fal_flux_mcp.server._journal import JobRecord, Journal, JournalError
from fal_flux_mcp.server._journal_sqlite import SCHEMA_VERSION, SqliteJournal

T0 = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)


def record(job_id: str = "req-1", **overrides: object) -> JobRecord:
    base = f"https://queue.fal.run/fal-ai/flux-pro/requests/{job_id}"
    values: dict[str, object] = {
        "job_id": job_id,
        "endpoint_id": "fal-ai/flux-pro/v1.1-ultra",
        "status_url": f"{base}/status",
        "response_url": base,
        "cancel_url": f"{base}/cancel",
        "arguments": {"prompt": "a lighthouse at dawn", "aspect_ratio": "16:9", "num_images": 1},
        "prompt": "a lighthouse at dawn",
    }
    values.update(overrides)
    return JobRecord.model_validate(values)


def test_a_job_survives_a_server_restart(open_store: Callable[[], Journal]) -> None:
    job = record(cost_usd=0.06, webhook_url="https://example.com/hook")
    with open_store() as first:
        assert first.add(job) is True
    with open_store() as second:
        assert second.get("req-1") == job
        assert [j.job_id for j in second.unfinished()] == ["req-1"]


def test_unknown_job_is_none(journal: Journal) -> None:
    assert journal.get("never-submitted") is None


def test_adding_a_job_again_changes_nothing(journal: Journal) -> None:
    journal.add(record())
    journal.update("req-1", status="in_progress", queue_position=0)
    assert journal.add(record(status="queued", prompt="something else")) is False
    stored = journal.get("req-1")
    assert stored is not None
    assert (stored.status, stored.prompt) == ("in_progress", "a lighthouse at dawn")
    assert len(journal.recent()) == 1


def test_update_tracks_progress_and_completion_time(journal: Journal) -> None:
    journal.add(record(created_at=T0, updated_at=T0))
    queued = journal.update("req-1", queue_position=3)
    assert (queued.status, queued.queue_position, queued.completed_at) == ("queued", 3, None)
    assert queued.updated_at > T0

    result = {"content": [{"type": "text", "text": "saved /home/u/Pictures/x.jpg"}], "images": 1}
    done = journal.update("req-1", status="completed", queue_position=None, result=result, cost_usd=0.06)
    assert done.completed_at is not None
    assert done.completed_at.tzinfo is not None and done.completed_at.utcoffset() == timedelta(0)
    assert done.updated_at >= queued.updated_at
    assert done.created_at == T0
    assert journal.get("req-1") == done
    assert journal.unfinished() == []


def test_a_finished_job_does_not_go_back_to_pending(journal: Journal) -> None:
    journal.add(record())
    done = journal.update("req-1", status="completed")
    late_poll = journal.update("req-1", status="in_progress", queue_position=2)
    assert late_poll.status == "completed"
    assert late_poll.completed_at == done.completed_at


def test_completion_time_is_kept_when_a_finished_job_changes_again(journal: Journal) -> None:
    journal.add(record())
    failed = journal.update("req-1", status="failed", error="NSFW content detected")
    again = journal.update("req-1", status="cancelled")
    assert again.completed_at == failed.completed_at
    assert again.error == "NSFW content detected"


def test_updating_an_unknown_job_is_a_key_error(journal: Journal) -> None:
    with pytest.raises(KeyError):
        journal.update("never-submitted", status="completed")


def test_invalid_values_are_refused_and_nothing_changes(journal: Journal) -> None:
    journal.add(record())
    with pytest.raises(ValueError):
        journal.update("req-1", status="done", queue_position=5)
    stored = journal.get("req-1")
    assert stored is not None
    assert (stored.status, stored.queue_position) == ("queued", None)


@pytest.mark.parametrize("field", ["job_id", "owner", "created_at", "updated_at"])
def test_identity_and_timestamps_cannot_be_rewritten(journal: Journal, field: str) -> None:
    journal.add(record())
    with pytest.raises(ValueError, match="cannot be updated"):
        journal.update("req-1", **{field: "x"})


def test_unknown_fields_and_secrets_are_never_stored(tmp_path: Path) -> None:
    secret = "fal-key-id:fal-key-SECRET-do-not-store"
    with pytest.raises(ValidationError):
        record(api_key=secret)
    with pytest.raises(ValidationError):
        record(headers={"Authorization": f"Key {secret}"})
    path = tmp_path / "jobs.sqlite3"
    with SqliteJournal(path) as journal:
        journal.add(record())
        with pytest.raises(ValueError, match="no field"):
            journal.update("req-1", status="completed", authorization=f"Key {secret}")
        assert journal.get("req-1").status == "queued"  # type: ignore[union-attr]
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    # One column per field, and the lease a replica holds while it follows the job (not a field).
    assert sorted(columns) == sorted([*JobRecord.model_fields, "lease_holder", "lease_expires"])
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"SECRET" not in stored


def test_recent_is_newest_first(journal: Journal) -> None:
    for n in (3, 0, 4, 1, 2):  # submission order differs from creation time order
        journal.add(record(f"req-{n}", created_at=T0 + timedelta(minutes=n)))
    assert [j.job_id for j in journal.recent(3)] == ["req-4", "req-3", "req-2"]
    assert len(journal.recent()) == 5


def test_jobs_created_in_the_same_instant_list_in_submission_order(journal: Journal) -> None:
    for n in range(3):
        journal.add(record(f"req-{n}", created_at=T0))
    assert [j.job_id for j in journal.recent()] == ["req-2", "req-1", "req-0"]


def test_unfinished_lists_only_pending_jobs_oldest_first(journal: Journal) -> None:
    for n, status in enumerate(["in_progress", "completed", "queued", "failed", "cancelled", "queued"]):
        journal.add(record(f"req-{n}", status=status, created_at=T0 - timedelta(minutes=n)))
    assert [j.job_id for j in journal.unfinished()] == ["req-5", "req-2", "req-0"]


def test_json_arguments_and_results_round_trip(journal: Journal) -> None:
    arguments = {
        "prompt": "naïve café — 猫 🐈",
        "seed": 2**40,
        "guidance_scale": 3.5,
        "enable_safety_checker": False,
        "image_url": None,
        "image_size": {"width": 1024, "height": 768},
        "loras": [{"path": "https://example.com/lora.safetensors", "scale": 0.75}],
    }
    result = {
        "content": [{"type": "image", "data": "/9j/4AAQ", "mimeType": "image/jpeg"}],
        "structuredContent": {"images": [{"path": "C:\\Users\\u\\Pictures\\x.jpg", "seed": 7}]},
    }
    journal.add(record(arguments=arguments))
    journal.update("req-1", status="completed", result=result)
    stored = journal.get("req-1")
    assert stored is not None
    assert stored.arguments == arguments
    assert stored.result == result


def test_values_that_are_not_json_are_refused() -> None:
    with pytest.raises(ValidationError):
        record(arguments={"image": b"\x89PNG"})


def test_times_must_be_aware_and_are_kept_in_utc() -> None:
    with pytest.raises(ValidationError):
        record(created_at=datetime(2025, 1, 1, 12, 0))  # naive: which zone?
    paris = record(created_at=datetime(2025, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1))))
    assert paris.created_at == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert paris.created_at.utcoffset() == timedelta(0)


def test_threads_can_share_one_journal(journal: Journal) -> None:
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        for i in range(25):
            job_id = f"req-{n}-{i}"
            journal.add(record(job_id))
            journal.update(job_id, status="in_progress", queue_position=i)
            journal.update("shared", queue_position=n * 100 + i)
            journal.update(job_id, status="completed")
            assert journal.get(job_id).status == "completed"  # type: ignore[union-attr]
            journal.recent(5)

    journal.add(record("shared"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert len(journal.recent(1000)) == 8 * 25 + 1
    assert [j.job_id for j in journal.unfinished()] == ["shared"]


def test_two_journals_on_one_store_see_each_others_jobs(open_store: Callable[[], Journal]) -> None:
    with open_store() as one, open_store() as other:
        one.add(record("req-a"))
        other.update("req-a", status="completed")
        assert one.get("req-a").status == "completed"  # type: ignore[union-attr]


def test_file_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    with SqliteJournal(tmp_path / "jobs.sqlite3") as journal, sqlite3.connect(journal.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_journal_from_a_newer_version_is_refused_not_damaged(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with SqliteJournal(path) as journal:
        journal.add(record())
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(JournalError, match="newer fal-flux-mcp"):
        SqliteJournal(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT job_id FROM jobs").fetchall() == [("req-1",)]
    db.close()


def test_recent_needs_a_positive_limit(journal: Journal) -> None:
    with pytest.raises(ValueError):
        journal.recent(0)


def back_to_schema_6(db: sqlite3.Connection) -> None:
    """Undo schema 7 in a journal file: no owners, leases or users' keys; pruned sums without owners."""
    db.execute("DROP INDEX jobs_by_owner")
    for table, column in (
        ("jobs", "owner"),
        ("jobs", "lease_holder"),
        ("jobs", "lease_expires"),
        ("intents", "owner"),
    ):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("DROP TABLE user_keys")
    db.execute(
        "CREATE TABLE spend_6 (bucket TEXT NOT NULL, endpoint_id TEXT NOT NULL, charge TEXT NOT NULL, "
        "cost_usd REAL NOT NULL, jobs INTEGER NOT NULL, PRIMARY KEY (bucket, endpoint_id, charge))"
    )
    db.execute("INSERT INTO spend_6 SELECT bucket, endpoint_id, charge, cost_usd, jobs FROM spend")
    db.execute("DROP TABLE spend")
    db.execute("ALTER TABLE spend_6 RENAME TO spend")
    db.execute("PRAGMA user_version = 6")


def test_a_journal_of_schema_4_keeps_its_jobs_and_learns_their_input_megapixels(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with SqliteJournal(path) as journal:
        journal.add(record())
    db = sqlite3.connect(path)  # back to what fal-flux-mcp wrote before FLUX.2 edits were billed
    back_to_schema_6(db)
    for table in ("jobs", "intents"):
        db.execute(f"ALTER TABLE {table} DROP COLUMN input_megapixels")
    db.execute("DROP TABLE spend")  # came with schema 6
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()

    with SqliteJournal(path) as journal:
        kept = journal.get("req-1")
        journal.add(record("req-2", input_megapixels=3))
        assert kept is not None and kept.input_megapixels == 0
        assert journal.get("req-2").input_megapixels == 3  # type: ignore[union-attr]
