"""A team's deployment under load and under kills: jobs across replicas, takeover time, duplicates.

The topology of the team tests (``tests/team.py``): a PostgreSQL server, two ``fal-flux-mcp`` processes
on Streamable HTTP with OAuth, Debian's nginx round robin in front, the emulator as fal. It prints:

- jobs: how many were submitted through nginx by several users at once and finished, how many requests
  nginx sent each replica, and which replica followed each job (the lease holder seen while it ran);
- takeover: in each trial a job is submitted to one replica, that replica is SIGKILLed, and the time
  until the other has finished the job (status completed, images saved) is measured from the kill;
- duplicates: files in the shared output folder beyond one per image, job rows beyond one per fal
  request, cost beyond the list price of what ran, and inputs fal received twice. Each must be 0.

Run from the repository root: ``python benchmarks/replicas.py --jobs 40 --trials 5``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import anyio
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fal_flux_mcp.emulator import Emulator, EmulatorConfig
from tests.issuer import running_issuer
from tests.postgres import PostgresServer
from tests.team import Team, running_team, wait_until

ULTRA = "fal-ai/flux-pro/v1.1-ultra"
#: fal's list price of one ultra image, which the emulator's pricing answers.
ULTRA_USD = 0.06


class LeaseWatch:
    """Notes the first lease holder seen on each job, polling the journal while jobs run."""

    def __init__(self, team: Team) -> None:
        self.team = team
        self.holders: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self.team.database_url, autocommit=True) as connection:
            while not self._stop.wait(0.05):
                rows = connection.execute(
                    "SELECT job_id, lease_holder FROM jobs WHERE lease_holder IS NOT NULL"
                ).fetchall()
                for job_id, holder in rows:
                    self.holders.setdefault(job_id, holder)


def finished(team: Team, job_id: str) -> bool:
    row = team.job_row(job_id)
    return row is not None and row["status"] == "completed" and not row["pending_save"]


async def submit_many(team: Team, jobs: int, users: int, at_once: int) -> list[str]:
    """``jobs`` ultra jobs through nginx, by ``users`` users, ``at_once`` in flight; their job ids."""
    job_ids: list[str] = []
    limit = anyio.Semaphore(at_once)

    async def user(number: int) -> None:
        async with team.client(f"user-{number}") as client:

            async def one(job: int) -> None:
                async with limit:
                    result = await client.call_tool(
                        "submit_job", {"prompt": f"user {number} job {job}", "model": ULTRA, "seed": job}
                    )
                if result.is_error:
                    raise RuntimeError(f"submit_job failed: {result.content}")
                job_ids.append(result.structured_content["job_id"])

            async with anyio.create_task_group() as group:
                for job in range(number, jobs, users):
                    group.start_soon(one, job)

    async with anyio.create_task_group() as group:
        for number in range(users):
            group.start_soon(user, number)
    return job_ids


async def submit_to(team: Team, origin: str, trial: int) -> str:
    async with team.client("takeover", origin=origin) as client:
        result = await client.call_tool(
            "submit_job", {"prompt": f"takeover {trial}", "model": ULTRA, "seed": trial}
        )
    if result.is_error:
        raise RuntimeError(f"submit_job failed: {result.content}")
    return str(result.structured_content["job_id"])


def takeover_trial(team: Team, trial: int) -> float:
    """Submit to one replica (which follows the job), SIGKILL it, and time the other one finishing the
    job; then start the killed one again."""
    victim = team.replicas[trial % len(team.replicas)]
    job_id = anyio.run(submit_to, team, victim.origin, trial)
    killed = time.monotonic()
    victim.kill()
    wait_until(lambda: finished(team, job_id), f"takeover of {job_id}", timeout=120)
    seconds = time.monotonic() - killed
    victim.start()
    victim.wait_ready()
    return seconds


def duplicates(team: Team, emulator: Emulator) -> dict[str, int]:
    """What was done more than once: files, job rows, cost, submissions."""
    on_fal = emulator.jobs()
    images = sum(int(job.input.get("num_images", 1) or 1) for job in on_fal)
    with psycopg.connect(team.database_url) as connection:
        rows, distinct, cost = connection.execute(
            "SELECT count(*), count(DISTINCT job_id), coalesce(sum(cost_usd), 0) FROM jobs"
        ).fetchone() or (0, 0, 0)
    inputs = Counter((job.input.get("prompt"), job.input.get("seed")) for job in on_fal)
    return {
        "files": len(team.saved_files()) - images,
        "job rows": rows - distinct + abs(distinct - len(on_fal)),
        "cost rows (in images' worth)": round((cost - ULTRA_USD * images) / ULTRA_USD),
        "submissions": sum(count - 1 for count in inputs.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs submitted through nginx")
    parser.add_argument("--users", type=int, default=4, help="users submitting them, each with a token")
    parser.add_argument("--at-once", type=int, default=8, help="submissions in flight")
    parser.add_argument("--job-seconds", type=float, default=2.0, help="how long each emulated job runs")
    parser.add_argument("--trials", type=int, default=5, help="SIGKILL takeover trials")
    parser.add_argument("--lease-seconds", type=float, default=10.0, help="FLUX_MCP_LEASE_SECONDS")
    args = parser.parse_args()

    postgres = PostgresServer()
    try:
        postgres.start()
        with (
            tempfile.TemporaryDirectory(prefix="flux-mcp-replicas-") as folder,
            Emulator(EmulatorConfig(job_seconds=args.job_seconds)) as emulator,
            running_issuer() as issuer,
            running_team(
                emulator_url=emulator.url,
                fal_key=emulator.key,
                issuer=issuer,
                database_url=postgres.database(),
                folder=Path(folder),
                env={
                    "FLUX_MCP_LEASE_SECONDS": f"{args.lease_seconds:g}",
                    "FLUX_MCP_DAILY_BUDGET_USD": "off",
                    "FLUX_MCP_MAX_USD_PER_CALL": "off",
                    "FLUX_MCP_LOG_LEVEL": "WARNING",
                },
            ) as team,
        ):
            return run(team, emulator, args)
    finally:
        postgres.stop()


def run(team: Team, emulator: Emulator, args: argparse.Namespace) -> int:
    names = {replica.upstream: replica.name for replica in team.replicas}
    started = time.monotonic()
    with LeaseWatch(team) as leases:
        job_ids = anyio.run(submit_many, team, args.jobs, args.users, args.at_once)
        wait_until(
            lambda: all(finished(team, job_id) for job_id in job_ids),
            "every job finished",
            timeout=300,
            every=0.2,
        )
    seconds = time.monotonic() - started
    done = sum(finished(team, job_id) for job_id in job_ids)
    requests = {names.get(upstream, upstream): count for upstream, count in team.nginx.answered_by().items()}
    followed = Counter(leases.holders.get(job_id, "no lease seen") for job_id in job_ids)
    print(
        f"jobs: {len(job_ids)} submitted through nginx by {args.users} users ({args.at_once} at a time), "
        f"{done} finished in {seconds:.1f} s"
    )
    print(f"  requests nginx sent each replica: {dict(sorted(requests.items()))}")
    print(f"  jobs followed by each replica (lease holder): {dict(sorted(followed.items()))}")

    takeovers = [takeover_trial(team, trial) for trial in range(args.trials)]
    if takeovers:
        print(
            f"takeover after SIGKILL of the following replica (FLUX_MCP_LEASE_SECONDS={args.lease_seconds:g}, "
            f"{args.job_seconds:g} s jobs), kill to finished by the other: "
            + ", ".join(f"{value:.2f}" for value in takeovers)
            + f" s; median {statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s"
        )
    found = duplicates(team, emulator)
    print("duplicates: " + ", ".join(f"{name} {value}" for name, value in found.items()))
    return 0 if done == len(job_ids) and not any(found.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
