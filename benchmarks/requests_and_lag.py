"""Requests to fal per job, and how late the result arrives: fal-flux-mcp's client beside fal's official one.

For single-image jobs of 0.5 s, 2 s and 10 s on the local emulator, both clients run the same jobs one
at a time. For each job it records the HTTP requests the emulator received (submit, status, stream,
result...) and the lag from the moment the job completed on the emulator to the moment the client
held the result. Both clocks are this process's ``time.monotonic``: the emulator runs in a thread here.

Run: ``python benchmarks/requests_and_lag.py`` (about 90 seconds). Targets for fal-flux-mcp: at most 3
requests per job whatever its length, median lag under 20 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import fal_client
import fal_client.client

from fal_flux_mcp.emulator import Emulator, EmulatorConfig
from fal_flux_mcp.fal import FalClient

ENDPOINT = "fal-ai/flux/schnell"
RunJob = Callable[[Emulator, str], Awaitable[str]]


async def ours(emulator: Emulator, prompt: str) -> str:
    async with FalClient(emulator.key, base_url=emulator.url) as client:
        handle = await client.submit(ENDPOINT, {"prompt": prompt})
        await client.wait(handle)
        return handle.request_id


async def official(emulator: Emulator, prompt: str) -> str:
    client = fal_client.AsyncClient(key=emulator.key)
    ids: list[str] = []
    await client.subscribe(ENDPOINT, {"prompt": prompt}, on_enqueue=ids.append)
    return ids[0]


def point_official_client_at(url: str) -> None:
    """fal-client hard-codes https hosts; its module globals are read at call time (fal_client.client)."""
    fal_client.client.QUEUE_URL_FORMAT = f"{url}/"
    fal_client.client.RUN_URL_FORMAT = f"{url}/run/"
    fal_client.client.REST_URL = url
    fal_client.client.CDN_URL = url


async def measure(
    emulator: Emulator, run: RunJob, seconds: float, jobs: int
) -> tuple[list[int], list[float]]:
    emulator.config.job_seconds = seconds
    requests: list[int] = []
    lags: list[float] = []
    for number in range(jobs):
        emulator.reset_counters()
        request_id = await run(emulator, f"benchmark job {seconds} {number}")
        held = time.monotonic()
        finished = emulator.job(request_id).finished_at
        assert finished is not None
        requests.append(sum(Counter(emulator.counters).values()))
        lags.append((held - finished) * 1000)
    return requests, lags


async def main(jobs_per_length: dict[float, int]) -> None:
    with Emulator(EmulatorConfig()) as emulator:
        point_official_client_at(emulator.url)
        await ours(emulator, "warm up")  # connection set-up and imports are not what is measured
        await official(emulator, "warm up")
        print(f"{'job':>6} | {'client':<18} | {'requests/job':>12} | {'lag p50':>9} | {'lag max':>9}")
        print("-" * 66)
        for seconds, jobs in jobs_per_length.items():
            for name, run in (("fal-flux-mcp", ours), (f"fal-client {fal_client.__version__}", official)):
                requests, lags = await measure(emulator, run, seconds, jobs)
                shown = (
                    f"{min(requests)}"
                    if min(requests) == max(requests)
                    else f"{min(requests)}-{max(requests)}"
                )
                print(
                    f"{seconds:>5}s | {name:<18} | {shown:>12} | {statistics.median(lags):7.1f}ms | "
                    f"{max(lags):7.1f}ms"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=0, help="jobs per length (default: 10, 5 and 3)")
    arguments = parser.parse_args()
    plan = {0.5: 10, 2.0: 5, 10.0: 3}
    if arguments.jobs:
        plan = dict.fromkeys(plan, arguments.jobs)
    anyio.run(main, plan)
