"""Leases on following a job, in the journal, on both backends: one replica at a time follows each job."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from fal_flux_mcp.server._journal import Journal
from fal_flux_mcp.server._records import utc_now
from tests.test_journal import T0, record


def test_a_free_job_is_claimed_by_one_replica_and_refused_to_another(journal: Journal) -> None:
    journal.add(record("req-1"))
    assert journal.claim("req-1", "replica-a", 10, now=T0)
    assert not journal.claim("req-1", "replica-b", 10, now=T0 + timedelta(seconds=9))
    lease = journal.lease("req-1")
    assert lease is not None and lease.holder == "replica-a"
    assert lease.expires == T0 + timedelta(seconds=10)


def test_claiming_again_renews_and_an_expired_lease_is_taken_over(journal: Journal) -> None:
    journal.add(record("req-1"))
    assert journal.claim("req-1", "replica-a", 10, now=T0)
    assert journal.claim("req-1", "replica-a", 10, now=T0 + timedelta(seconds=5))
    assert not journal.claim("req-1", "replica-b", 10, now=T0 + timedelta(seconds=14))
    assert journal.claim("req-1", "replica-b", 10, now=T0 + timedelta(seconds=16))
    lease = journal.lease("req-1")
    assert lease is not None and lease.holder == "replica-b"
    assert journal.renew("replica-a", 10, now=T0 + timedelta(seconds=17)) == set()  # lost to b
    lease = journal.lease("req-1")
    assert lease is not None and (lease.holder, lease.expires) == ("replica-b", T0 + timedelta(seconds=26))


def test_renewing_extends_every_lease_a_replica_holds_and_only_those(journal: Journal) -> None:
    for job_id in ("req-1", "req-2", "req-3"):
        journal.add(record(job_id))
    assert journal.claim("req-1", "a", 10, now=T0) and journal.claim("req-2", "a", 10, now=T0)
    assert journal.claim("req-3", "b", 10, now=T0)
    assert journal.renew("a", 10, now=T0 + timedelta(seconds=8)) == {"req-1", "req-2"}
    assert not journal.claim("req-1", "b", 10, now=T0 + timedelta(seconds=12))  # renewed: still a's
    assert journal.claim("req-3", "a", 10, now=T0 + timedelta(seconds=12))  # b did not renew


def test_a_finished_job_loses_its_lease_and_cannot_be_claimed(journal: Journal) -> None:
    journal.add(record("req-1"))
    assert journal.claim("req-1", "a", 10)
    journal.update("req-1", status="completed", pending_save=True)
    assert journal.lease("req-1") is not None  # images still to save: still followed
    journal.update("req-1", pending_save=False)
    assert journal.lease("req-1") is None
    assert not journal.claim("req-1", "b", 10)
    assert journal.unfollowed() == []


def test_releasing_frees_the_job_for_any_replica_at_once(journal: Journal) -> None:
    journal.add(record("req-1"))
    journal.add(record("req-2"))
    assert journal.claim("req-1", "a", 10) and journal.claim("req-2", "a", 10)
    assert not journal.release("req-1", "b")  # not b's to release
    assert journal.release("req-1", "a")
    assert journal.lease("req-1") is None
    assert journal.claim("req-1", "b", 10)
    assert journal.release_all("a") == 1
    assert journal.lease("req-2") is None


def test_unfollowed_lists_jobs_to_take_over_oldest_first(journal: Journal) -> None:
    journal.add(record("req-new", created_at=T0 + timedelta(minutes=1)))
    journal.add(record("req-old", created_at=T0))
    journal.add(record("req-held", created_at=T0))
    journal.add(record("req-expired", created_at=T0 - timedelta(minutes=1)))
    journal.add(record("req-saving", status="completed", pending_save=True, created_at=T0))
    journal.add(record("req-done", status="completed", created_at=T0))
    now = utc_now()
    assert journal.claim("req-held", "a", 10, now=now)
    assert journal.claim("req-expired", "a", 10, now=now - timedelta(seconds=11))
    assert [r.job_id for r in journal.unfollowed(now=now)] == [
        "req-expired",
        "req-old",
        "req-saving",
        "req-new",
    ]


def test_an_unknown_job_cannot_be_claimed(journal: Journal) -> None:
    assert not journal.claim("nope", "a", 10)
    assert journal.lease("nope") is None


def test_replicas_racing_for_one_job_have_exactly_one_winner(open_store: Callable[[], Journal]) -> None:
    stores = [open_store() for _ in range(6)]
    try:
        stores[0].add(record("req-1"))
        with ThreadPoolExecutor(len(stores)) as pool:
            won = list(pool.map(lambda n: stores[n].claim("req-1", f"replica-{n}", 10), range(len(stores))))
        assert won.count(True) == 1
        lease = stores[0].lease("req-1")
        assert lease is not None and lease.holder == f"replica-{won.index(True)}"
    finally:
        for store in stores:
            store.close()
