"""The image path: lag, CPU, concurrency and memory of fal-flux-mcp beside a bare MCP server, in one run.

The emulator draws photo-like images (``look="photo"``: a photo's grain and JPEG size), so decoding
costs what it costs on fal's real output. FLUX1.1 [pro] ultra, 16:9 (2752x1536), is the model.

The floor is a bare ``MCPServer`` from the same SDK, over the same stdio transport, with two tools:
``url_only`` runs the job on the emulator (submit, status stream, result) and returns only the URLs,
as URL-returning image servers do; ``sleep`` waits, for the concurrency floor. fal-flux-mcp does
more per job (it downloads, saves and previews every image): the ratios show what that costs.

Prints, for each run:
- lag: from the emulator completing a job to the MCP client holding the result (first call of a new
  server, then the median of warm calls), for 1-image and 4-image jobs;
- server CPU per 1-image job, everything included (from ``/proc``);
- wall time and the server's peak RSS for 10, 50 and 200 concurrent 2 s jobs, beside the floor's;
- a soak of 1,000 jobs: the server's RSS and its state folder every 100 jobs, with retention on.

Run: ``python benchmarks/image_path.py`` (about 4 minutes a run; ``--runs 2`` for two). Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _processes import IGNORED, cpu_seconds, folder_bytes, memory_kib, only_child, server_env

from fal_flux_mcp.emulator import Emulator, EmulatorConfig
from fal_flux_mcp.emulator._config import DEFAULT_KEY

ULTRA = "fal-ai/flux-pro/v1.1-ultra"

FLOOR_SERVER = textwrap.dedent(
    """
    import logging
    import os

    import anyio
    import httpx
    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("floor")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    http = None

    @mcp.tool()
    async def sleep(seconds: float) -> str:
        \"\"\"Wait.\"\"\"
        await anyio.sleep(seconds)
        return "done"

    @mcp.tool()
    async def url_only(prompt: str, model: str, seed: int, num_images: int = 1, fetch: bool = False) -> str:
        \"\"\"Run a job on fal and return its request id and image URLs (fetch: download them too).\"\"\"
        global http
        if http is None:
            http = httpx.AsyncClient(
                headers={"Authorization": "Key " + os.environ["FLOOR_FAL_KEY"]}, timeout=120
            )
        body = {"prompt": prompt, "seed": seed, "num_images": num_images}
        submitted = (await http.post(os.environ["FLOOR_FAL_URL"] + "/" + model, json=body)).json()
        async with http.stream("GET", submitted["status_url"] + "/stream") as events:
            async for line in events.aiter_lines():
                if '"COMPLETED"' in line:
                    break
        output = (await http.get(submitted["response_url"])).json()
        urls = " ".join(image["url"] for image in output["images"])
        if fetch:
            for image in output["images"]:
                (await http.get(image["url"])).raise_for_status()
        return submitted["request_id"] + " " + urls

    mcp.run("stdio")
    """
)

Call = Callable[[Client, int, int], Awaitable[str]]


class Servers:
    """How to start fal-flux-mcp and the floor against one emulator, each time in a new state folder."""

    def __init__(self, url: str, root: Path, key: str = DEFAULT_KEY) -> None:
        self.url = url
        self.key = key
        self.root = root
        self.floor_script = root / "floor.py"
        self.floor_script.write_text(FLOOR_SERVER)
        self._count = 0

    def ours(self, **settings: str) -> StdioServerParameters:
        self._count += 1
        home = self.root / f"ours-{self._count}"
        env = {**server_env(self.url, self.key, home), **settings}
        return StdioServerParameters(command=sys.executable, args=["-m", "fal_flux_mcp", "serve"], env=env)

    def floor(self) -> StdioServerParameters:
        env = {"FLOOR_FAL_URL": self.url, "FLOOR_FAL_KEY": self.key}
        return StdioServerParameters(command=sys.executable, args=[str(self.floor_script)], env=env)


async def ours_call(client: Client, seed: int, num_images: int) -> str:
    result = await client.call_tool(
        "generate_image",
        {
            "prompt": f"a busy market at dusk, photograph {seed}",
            "model": ULTRA,
            "seed": seed,
            "num_images": num_images,
        },
    )
    content = result.structured_content
    assert content and content["status"] == "completed", result
    assert all(image["save_state"] == "saved" for image in content["images"]), content
    return str(content["job_id"])


async def floor_call(client: Client, seed: int, num_images: int, *, fetch: bool = False) -> str:
    result = await client.call_tool(
        "url_only",
        {
            "prompt": f"a busy market at dusk, photograph {seed}",
            "model": ULTRA,
            "seed": seed,
            "num_images": num_images,
            "fetch": fetch,
        },
    )
    assert not result.is_error, result
    return result.content[0].text.split()[0]  # type: ignore[union-attr]


async def lags(
    emulator: Emulator, params: StdioServerParameters, call: Call, *, first_seed: int, warm: int
) -> dict[str, float]:
    """Lag of the first call of a new server, median warm lags (1 and 4 images), CPU per 1-image job."""

    async def lag(client: Client, seed: int, num_images: int) -> float:
        job_id = await call(client, seed, num_images)
        held = time.monotonic()
        finished = emulator.job(job_id).finished_at
        assert finished is not None
        return (held - finished) * 1000

    async with Client(params, mode="legacy") as client:
        await client.list_tools()
        first = await lag(client, first_seed, 1)
        pid = only_child()
        cpu_before = cpu_seconds(pid)
        one = [await lag(client, first_seed + 1 + n, 1) for n in range(warm)]
        cpu_per_job = (cpu_seconds(pid) - cpu_before) / warm * 1000
        four = [await lag(client, first_seed + 1000 + n, 4) for n in range(max(3, warm // 2))]
    return {
        "first": first,
        "warm1": statistics.median(one),
        "warm4": statistics.median(four),
        "cpu": cpu_per_job,
    }


async def concurrent(
    params: StdioServerParameters, run: Callable[[Client, int], Awaitable[None]], jobs: int
) -> tuple[float, float, float, float]:
    """Wall time, spread of finishing times, peak RSS (MiB) and CPU seconds of a new server, ``jobs`` at once."""
    finished: list[float] = []
    async with Client(params, mode="legacy") as client:
        await client.list_tools()
        pid = only_child()
        cpu_before = cpu_seconds(pid)

        async def one(index: int) -> None:
            await run(client, index)
            finished.append(time.perf_counter())

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for index in range(jobs):
                group.start_soon(one, index)
        wall = time.perf_counter() - started
        peak = memory_kib(pid) / 1024
        cpu = cpu_seconds(pid) - cpu_before
    finished.sort()
    return wall, finished[-1] - finished[0], peak, cpu


async def soak(servers: Servers, jobs: int, seeds: range) -> list[tuple[int, float, float]]:
    """(jobs done, RSS MiB, state folder MiB) every 100 jobs of ``jobs``, 8 at a time, retention on."""
    params = servers.ours(FLUX_MCP_KEEP_DAYS="0.0002")  # 17 s: finished jobs leave as the soak runs
    state = Path(params.env["FLUX_MCP_STATE_DIR"])  # type: ignore[index]
    samples: list[tuple[int, float, float]] = []
    done = 0
    async with Client(params, mode="legacy") as client:
        await client.list_tools()
        pid = only_child()
        limiter = anyio.CapacityLimiter(8)

        async def one(index: int) -> None:
            nonlocal done
            async with limiter:
                await ours_call(client, seeds[index % len(seeds)], 1)
            done += 1
            if done % 100 == 0:
                samples.append((done, memory_kib(pid, "VmRSS") / 1024, folder_bytes(state) / 2**20))

        async with anyio.create_task_group() as group:
            for index in range(jobs):
                group.start_soon(one, index)
    return samples


@contextlib.contextmanager
def emulator_process(look: str, job_seconds: float) -> Iterator[str]:
    """An emulator in a process of its own, so that serving hundreds of downloads does not share the
    client's interpreter (and its GIL) with it; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "fal_flux_mcp.emulator", "--port", str(port), "--look", look]
    command += ["--job-seconds", str(job_seconds), "--render-cache", "1200"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    IGNORED.add(process.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()
        IGNORED.discard(process.pid)


def row(what: str, ours: float, floor: float | None, unit: str, target: str) -> None:
    floor_text = f"{floor:9.1f} {unit:<3}" if floor is not None else " " * 13
    ratio = f"{ours / floor:5.2f}x" if floor else "      "
    print(f"  {what:<44} {ours:9.1f} {unit:<3} {floor_text} {ratio}   target {target}")


async def one_run(number: int, soak_jobs: int, look: str, concurrency: list[int]) -> None:
    seed = 100_000 * number
    config = EmulatorConfig(look=look, job_seconds=1.0, render_cache=600)
    print(f"run {number}, {look} images: {'':<27} {'fal-flux-mcp':>13} {'floor':>13}  ratio")
    with tempfile.TemporaryDirectory() as tmp, Emulator(config) as emulator:
        # In this process, to read when each job completed: one job at a time, so nothing competes.
        servers = Servers(emulator.url, Path(tmp))
        ours = await lags(emulator, servers.ours(), ours_call, first_seed=seed, warm=20)
        floor = await lags(emulator, servers.floor(), floor_call, first_seed=seed, warm=20)
    row("lag p50, warm, 1-image ultra", ours["warm1"], floor["warm1"], "ms", "<= 25 ms")
    row("lag p50, warm, 4-image ultra", ours["warm4"], floor["warm4"], "ms", "<= 40 ms")
    row(
        "lag of the first call",
        ours["first"],
        floor["first"],
        "ms",
        f"<= 2x warm ({2 * ours['warm1']:.0f} ms)",
    )
    row("  first call / warm", ours["first"] / ours["warm1"], floor["first"] / floor["warm1"], "x", "<= 2")
    row("server CPU per 1-image ultra job", ours["cpu"], floor["cpu"], "ms", "<= 20 ms")

    with tempfile.TemporaryDirectory() as tmp, emulator_process(look, 2.0) as url:
        servers = Servers(url, Path(tmp))
        for jobs in concurrency:
            base = seed + 10_000 * jobs

            async def warm_up(client: Client, index: int, base: int = base) -> None:
                # The emulator draws these now, not below: fetching waits until each is drawn.
                await floor_call(client, base + index, 1, fetch=True)

            async def generate(client: Client, index: int, base: int = base) -> None:
                await ours_call(client, base + index, 1)

            async def sleep(client: Client, index: int) -> None:
                await client.call_tool("sleep", {"seconds": 2.0})

            await concurrent(servers.floor(), warm_up, jobs)
            ours_wall, ours_spread, ours_peak, ours_cpu = await concurrent(servers.ours(), generate, jobs)
            floor_wall, floor_spread, floor_peak, floor_cpu = await concurrent(servers.floor(), sleep, jobs)
            targets = {10: ("", "<= 100 MiB"), 50: ("<= 1.4x", ""), 200: ("<= 2.2x", "<= 150 MiB")}.get(
                jobs, ("", "")
            )
            row(f"{jobs} concurrent 2 s jobs, wall", ours_wall, floor_wall, "s", targets[0] or "-")
            row("  first to last result", ours_spread, floor_spread, "s", "-")
            row("  server peak RSS", ours_peak, floor_peak, "MiB", targets[1] or "-")
            row("  server CPU, all jobs", ours_cpu, floor_cpu, "s", "-")

    if soak_jobs:
        with tempfile.TemporaryDirectory() as tmp, emulator_process(look, 0.5) as url:
            servers = Servers(url, Path(tmp))
            seeds = range(seed + 50_000, seed + 50_000 + 256)

            async def draw(client: Client, index: int) -> None:
                await floor_call(client, seeds[index], 1, fetch=True)

            await concurrent(servers.floor(), draw, len(seeds))
            samples = await soak(servers, soak_jobs, seeds)
        print(f"  soak of {soak_jobs} 1-image ultra jobs, 8 at a time, FLUX_MCP_KEEP_DAYS=0.0002 (17 s):")
        print("    " + "  ".join(f"{done:>5}" for done, _, _ in samples) + "   jobs done")
        print("    " + "  ".join(f"{rss:5.0f}" for _, rss, _ in samples) + "   server RSS, MiB")
        print("    " + "  ".join(f"{size:5.1f}" for _, _, size in samples) + "   state folder, MiB")
    print()


async def main(runs: int, soak_jobs: int, look: str, concurrency: list[int]) -> None:
    for number in range(1, runs + 1):
        await one_run(number, soak_jobs, look, concurrency)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--soak", type=int, default=1000, help="jobs in the soak (0: no soak)")
    parser.add_argument("--look", choices=("photo", "flat"), default="photo", help="the emulator's images")
    parser.add_argument("--concurrency", default="10,50,200", help="concurrent job counts, comma-separated")
    arguments = parser.parse_args()
    counts = [int(count) for count in arguments.concurrency.split(",") if count]
    anyio.run(main, arguments.runs, arguments.soak, arguments.look, counts)
