"""``fal-flux-mcp demo``: the whole product, offline, in one command.

It starts the fal emulator on a free loopback port, launches the real server as a stdio subprocess
pointed at it, and calls ``generate_image`` through the SDK's MCP client, printing progress as it
arrives and the saved file at the end. Nothing leaves the machine and no fal account is needed. The
picture is the emulator's placeholder, not the prompt drawn, so it goes to a folder of its own.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters


def run_demo(*, prompt: str, model: str, aspect_ratio: str, output_dir: Path | None) -> int:
    """Run the demo; returns the process exit code.

    ``output_dir`` None: a new temporary folder. Never the configured output folder: a placeholder
    picture has no place among the user's real ones.
    """
    from fal_flux_mcp.emulator import Emulator, EmulatorConfig

    if output_dir is None:
        output = Path(tempfile.mkdtemp(prefix="fal-flux-mcp-demo-images-"))
    else:
        output = output_dir.expanduser().resolve()
    print(f"saving into {output}")
    state_dir = Path(tempfile.mkdtemp(prefix="fal-flux-mcp-demo-"))
    try:
        with Emulator(EmulatorConfig(job_seconds=2.0)) as emulator:
            print(f"fal emulator listening on {emulator.url} (no network, no account)")
            print("the emulator draws a placeholder picture, not your prompt: with a fal key, fal draws it")
            env = {
                "FLUX_MCP_FAL_URL": emulator.url,
                "FAL_KEY": emulator.key,
                "FLUX_MCP_OUTPUT_DIR": str(output),
                "FLUX_MCP_STATE_DIR": str(state_dir),
                "FLUX_MCP_LOG_LEVEL": "WARNING",
            }
            return anyio.run(_generate, env, prompt, model, aspect_ratio)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


async def _generate(env: dict[str, str], prompt: str, model: str, aspect_ratio: str) -> int:
    params = StdioServerParameters(command=sys.executable, args=["-m", "fal_flux_mcp", "serve"], env=env)
    started = time.perf_counter()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        print(f"  [{time.perf_counter() - started:5.2f}s] {message or progress}")

    async with Client(params) as client:
        tools = await client.list_tools()
        print(f"MCP server over stdio: {len(tools.tools)} tools ({', '.join(t.name for t in tools.tools)})")
        print(f"generate_image(prompt={prompt!r}, model={model!r}, aspect_ratio={aspect_ratio!r})")
        result = await client.call_tool(
            "generate_image",
            {"prompt": prompt, "model": model, "aspect_ratio": aspect_ratio},
            progress_callback=on_progress,
        )
    data = result.structured_content or {}
    if result.is_error:
        print("failed:", " ".join(getattr(block, "text", "") for block in result.content), file=sys.stderr)
        return 1
    previews = [block for block in result.content if block.type == "image"]
    print(
        f"done in {time.perf_counter() - started:.2f}s: status {data.get('status')}, job {data.get('job_id')}, "
        f"cost ${data.get('cost_usd')} ({data.get('price_source')}; nothing is billed on the emulator)"
    )
    for image in data.get("images", []):
        print(f"  image {image['index'] + 1}: {image['width']}x{image['height']} {image['content_type']}")
        print(f"    saved to {image['path']}")
        print(f"    resource {image['resource_uri']}, url {image['url']}")
    print(
        f"  {len(previews)} preview(s) inline for the model; result size {len(result.model_dump_json())} bytes"
    )
    return 0
