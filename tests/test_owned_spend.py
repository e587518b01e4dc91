"""Each user's jobs, spend and budgets in the journal and the ledger, on both backends; and journals from
before owners, which become the one local user's."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from fal_flux_mcp.server._journal import Journal, SubmitIntent
from fal_flux_mcp.server._journal_postgres import PostgresJournal
from fal_flux_mcp.server._journal_sqlite import SqliteJournal
from fal_flux_mcp.server._ledger import Ledger, today_and_this_month
from fal_flux_mcp.server._records import LOCAL_OWNER
from fal_flux_mcp.settings import Settings
from tests.test_journal import back_to_schema_6, record
from tests.test_journal_postgres import race_to_reserve
from tests.test_settings import run_cli

NOW = datetime.now(UTC)
DAY, _ = today_and_this_month(NOW)
#: Earlier today, whatever the hour the test runs at.
EARLIER = DAY.start + (NOW - DAY.start) / 2


def settings_for(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, state_dir=tmp_path, output_dir=tmp_path / "out", **values)  # type: ignore[call-arg]


def intent(number: int, owner: str, cost: float, **values: object) -> SubmitIntent:
    return SubmitIntent.model_validate(
        {"intent_id": f"{owner}-{number}", "owner": owner, "endpoint_id": "fal-ai/flux/dev", "arguments": {}}
        | {"cost_usd": cost, **values}
    )


def spend_of_alice_and_bob(journal: Journal) -> None:
    """Alice: a job pruned into the sums, a final job, a released one, a pending submission; Bob: one job."""
    journal.add(
        record("a-old", owner="alice", status="completed", created_at=EARLIER, cost_usd=0.25, charge="final")
    )
    journal.prune((EARLIER + (NOW - EARLIER) / 2).isoformat(timespec="microseconds"))
    journal.add(record("a-final", owner="alice", status="completed", cost_usd=0.5, charge="final"))
    journal.add(record("a-released", owner="alice", status="failed", cost_usd=0.2, charge="released"))
    journal.add_intent(intent(1, "alice", 0.1))
    journal.add(record("b-final", owner="bob", status="completed", cost_usd=0.3, charge="final"))
    journal.add_intent(intent(2, "bob", 0.04, state="unconfirmed", note="fal's history cannot be read"))


def test_each_users_spend_counts_their_jobs_submissions_and_pruned_sums_only(
    journal: Journal, tmp_path: Path
) -> None:
    spend_of_alice_and_bob(journal)
    ledger = Ledger(journal, settings_for(tmp_path, daily_budget_usd=1.0))

    alice, bob, carol = (ledger.report(owner) for owner in ("alice", "bob", "carol"))

    assert journal.get("a-old") is None, "pruned into the sums"
    assert alice.periods[0].total_usd == pytest.approx(0.85)
    assert alice.periods[0].released_usd == pytest.approx(0.2)
    assert [job.job_id for job in alice.most_expensive] == ["a-final", "a-released"]
    assert alice.unconfirmed_submissions == [] and alice.budgets.left_today_usd == pytest.approx(0.15)
    assert bob.periods[0].total_usd == pytest.approx(0.34) and [j.job_id for j in bob.most_expensive] == [
        "b-final"
    ]
    assert [s.note for s in bob.unconfirmed_submissions] == ["fal's history cannot be read"]
    assert (
        carol.periods[0].total_usd == 0 and carol.most_expensive == [] and carol.budgets.left_today_usd == 1.0
    )


def test_a_budget_check_counts_only_its_users_spend_and_their_override_beats_the_default(
    journal: Journal, tmp_path: Path
) -> None:
    spend_of_alice_and_bob(journal)
    settings = settings_for(
        tmp_path,
        daily_budget_usd=1.0,
        max_usd_per_call=0.5,
        user_budgets='{"bob": {"daily_usd": 2, "max_usd_per_call": "off"}}',
    )
    ledger = Ledger(journal, settings)

    refused = ledger.reserve(intent(3, "alice", 0.2), approved=False)
    assert refused is not None and "FLUX_MCP_DAILY_BUDGET_USD ($1.00; $0.85 spent today" in refused
    assert ledger.reserve(intent(4, "bob", 1.5), approved=False) is None, "bob's own 2.00, not alice's 1.00"
    over = ledger.reserve(intent(5, "bob", 0.2), approved=False)
    assert over is not None and "FLUX_MCP_USER_BUDGETS['bob'].daily_usd ($2.00; $1.84 spent today" in over
    assert ledger.reserve(intent(6, "carol", 0.9), approved=False) is None
    assert ledger.over_limit(0.6, "alice") == "the estimate $0.60 is over FLUX_MCP_MAX_USD_PER_CALL ($0.50)"
    assert ledger.over_limit(0.15, "bob") is None, "bob's per-call limit is off; his day has $0.16 left"
    assert ledger.left("alice") == (pytest.approx(0.15), None) and ledger.left("bob") == (
        pytest.approx(0.16),
        None,
    )
    assert {i.intent_id for i in journal.intents("bob")} == {"bob-2", "bob-4"}


def test_a_users_lookups_find_only_their_jobs_and_submissions(journal: Journal) -> None:
    spend_of_alice_and_bob(journal)

    assert journal.get("b-final", "bob") is not None and journal.get("b-final") is not None
    assert journal.get("b-final", "alice") is None
    assert [job.job_id for job in journal.recent(5, "alice")] == ["a-released", "a-final"]
    assert journal.recently_completed(5, "bob") == ["b-final"]
    assert [i.intent_id for i in journal.intents("alice")] == ["alice-1"] and len(journal.intents()) == 2


def test_ten_processes_of_two_users_each_reserve_their_own_three(database_url: str, tmp_path: Path) -> None:
    refusals = race_to_reserve(database_url, tmp_path, ["alice", "bob"] * 5)  # $0.18 a day each: three
    assert [refusal is None for refusal in refusals[0::2]].count(True) == 3
    assert [refusal is None for refusal in refusals[1::2]].count(True) == 3
    with PostgresJournal(database_url) as journal:
        assert len(journal.intents("alice")) == 3 and len(journal.intents("bob")) == 3


def test_a_journal_of_schema_6_becomes_the_local_users_with_the_same_spend(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with SqliteJournal(path) as journal:
        spend_of_alice_and_bob(journal)  # the owners go with the columns below: all of it was one person's
        before = Ledger(journal, settings_for(tmp_path))
        everyone = [before.report(owner).periods[0].total_usd for owner in ("alice", "bob")]
        jobs_before = {
            job.job_id: job.model_copy(update={"owner": LOCAL_OWNER}) for job in journal.recent(10)
        }
    db = sqlite3.connect(path)  # back to what fal-flux-mcp wrote before owners
    back_to_schema_6(db)
    db.commit()
    db.close()

    with SqliteJournal(path) as journal:
        ledger = Ledger(journal, settings_for(tmp_path))
        local = ledger.report(LOCAL_OWNER)
        owners = {
            row[0]
            for table in ("jobs", "intents", "spend")
            for row in journal.read(f"SELECT owner FROM {table}")
        }
        assert {job.job_id: job for job in journal.recent(10, LOCAL_OWNER)} == jobs_before
        assert ledger.report("alice").periods[0].total_usd == 0

    assert owners == {LOCAL_OWNER}
    assert local.periods[0].total_usd == pytest.approx(sum(everyone)) and local.periods[0].total_usd > 0
    assert {job.job_id for job in local.most_expensive} == {"a-final", "a-released", "b-final"}
    assert len(local.unconfirmed_submissions) == 1


def test_user_budgets_are_checked_at_start_naming_the_user_and_the_limit(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, user_budgets='{"alice": {"daily_usd": 5, "monthly_usd": "off"}}')
    assert (
        settings.user_budgets["alice"].daily_usd == 5 and settings.user_budgets["alice"].monthly_usd is None
    )
    with pytest.raises(ValidationError, match="'alice' > 'daily': Extra inputs are not permitted"):
        settings_for(tmp_path, user_budgets='{"alice": {"daily": 5}}')

    completed = run_cli("serve", env={"FLUX_MCP_USER_BUDGETS": '{"bob": {"daily_usd": -1}}'}, home=tmp_path)

    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr
    line = next(line.strip() for line in completed.stderr.splitlines() if "FLUX_MCP_USER_BUDGETS" in line)
    assert line.startswith("""FLUX_MCP_USER_BUDGETS='{"bob": {"daily_usd": -1}}': 'bob' > 'daily_usd': """)
    assert "greater than or equal to 0" in line and '"off"' in line and "JSON" in line.split("Allowed:")[1]
