"""How fast the MCP server is, measured through real MCP clients against the local fal emulator.

Prints:
- cold start to the first ``tools/list`` over stdio, for fal-flux-mcp and for a bare ``MCPServer`` with
  one tool (the floor: what the SDK and Python cost by themselves), medians of several launches;
- the median round trip of ``check_status`` on a finished job over stdio;
- wall time and the server's peak memory for 50 concurrent ``generate_image`` calls of 2 s jobs;
- the size in bytes of a finished result with 4 FLUX1.1 [pro] ultra images.

Run: ``python benchmarks/server.py`` (about a minute). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _processes import children, memory_kib, server_env

from fal_flux_mcp.emulator import Emulator, EmulatorConfig

FLOOR_SERVER = textwrap.dedent(
    """
    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("floor")

    @mcp.tool()
    def echo(text: str) -> str:
        \"\"\"Echo.\"\"\"
        return text

    mcp.run("stdio")
    """
)


async def cold_start(params: StdioServerParameters) -> float:
    started = time.perf_counter()
    async with Client(params, mode="legacy") as client:
        await client.list_tools()
        elapsed = time.perf_counter() - started
    return elapsed


def children_peak_rss_kib() -> int:
    """Peak resident memory (VmHWM) of this process's direct children (Linux)."""
    peaks = []
    for pid in children():
        try:
            peaks.append(memory_kib(pid))
        except (OSError, RuntimeError):
            continue
    return max(peaks, default=0)


async def concurrent_generations(
    params: StdioServerParameters, emulator: Emulator, model: str, concurrency: int
) -> tuple[float, float, int]:
    """Wall time, slowest call and server peak RSS (KiB) for ``concurrency`` generations of 2 s jobs."""
    emulator.config.job_seconds = 2.0
    durations: list[float] = []
    async with Client(params, mode="legacy") as client:
        await client.list_tools()

        async def one(index: int) -> None:
            begun = time.perf_counter()
            result = await client.call_tool(
                "generate_image",
                {"prompt": f"concurrent image number {index}", "model": model, "seed": index},
            )
            assert result.structured_content and result.structured_content["status"] == "completed", result
            durations.append(time.perf_counter() - begun)

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for index in range(concurrency):
                group.start_soon(one, index)
        wall = time.perf_counter() - started
        peak = children_peak_rss_kib()
    return wall, max(durations), peak


async def main(launches: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, Emulator(EmulatorConfig(job_seconds=2.0)) as emulator:
        root = Path(tmp)
        env = server_env(emulator.url, emulator.key, root)
        floor_script = root / "floor.py"
        floor_script.write_text(FLOOR_SERVER)
        ours = StdioServerParameters(command=sys.executable, args=["-m", "fal_flux_mcp", "serve"], env=env)
        floor = StdioServerParameters(command=sys.executable, args=[str(floor_script)], env={})

        await cold_start(ours)  # warm the OS file cache for both, as a user's second launch would be
        await cold_start(floor)
        ours_times, floor_times = [], []
        for _ in range(launches):
            ours_times.append(await cold_start(ours))
            floor_times.append(await cold_start(floor))
        ours_ms = statistics.median(ours_times) * 1000
        floor_ms = statistics.median(floor_times) * 1000
        print(f"cold start to first tools/list over stdio (median of {launches}):")
        print(f"  fal-flux-mcp        {ours_ms:7.1f} ms")
        print(f"  bare MCPServer  {floor_ms:7.1f} ms   (floor)")
        print(f"  overhead        {100 * (ours_ms / floor_ms - 1):+6.1f} %  (target: within +15 %)")

        async with Client(ours, mode="legacy") as client:
            emulator.config.job_seconds = 0.05
            done = await client.call_tool(
                "generate_image", {"prompt": "a finished job", "model": "fal-ai/flux/schnell"}
            )
            job_id = done.structured_content["job_id"]
            trips = []
            for _ in range(200):
                started = time.perf_counter()
                await client.call_tool("check_status", {"job_id": job_id})
                trips.append(time.perf_counter() - started)
            print(
                f"check_status on a finished job over stdio: median {statistics.median(trips) * 1000:.2f} ms, "
                f"p95 {sorted(trips)[int(len(trips) * 0.95)] * 1000:.2f} ms (200 calls)"
            )

        for model in ("fal-ai/flux/schnell", "fal-ai/flux-pro/v1.1-ultra"):
            # Round 1 renders the images in the emulator (this process, these 2 cores); round 2 asks for
            # the same prompts and seeds, which the emulator serves from its cache, as fal's GPUs would
            # serve them from elsewhere: round 2 is the cost of fal-flux-mcp itself.
            for label in ("emulator rendering too", "fal-flux-mcp alone"):
                wall, slowest, peak = await concurrent_generations(ours, emulator, model, concurrency)
                print(
                    f"{concurrency} concurrent generate_image, 2 s jobs, {model} ({label}): all done in "
                    f"{wall:.2f} s (target 3 s), slowest call {slowest:.2f} s, server peak RSS {peak / 1024:.0f} MiB"
                )

        async with Client(ours, mode="legacy") as client:
            emulator.config.job_seconds = 0.05
            four = await client.call_tool(
                "generate_image", {"prompt": "four ultra images, detailed market scene", "num_images": 4}
            )
        size = len(four.model_dump_json(by_alias=True, exclude_none=True).encode())
        previews = sum(1 for block in four.content if block.type == "image")
        print(
            f"result with 4 ultra images (2752x1536 each): {size:,} bytes with {previews} previews "
            f"(target: under 1,000,000)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    arguments = parser.parse_args()
    anyio.run(main, arguments.launches, arguments.concurrency)
