"""A pydantic-ai agent that uses fal-flux-mcp as an MCP toolset, offline, with a scripted stand-in for the LLM.

What it shows:

* ``MCPToolset`` launching ``python -m fal_flux_mcp serve`` over stdio (with an explicit environment) and
  offering its tools (``generate_image``, ``submit_job``, ``check_status``...) to an ``Agent``;
* a complete agent run in which the model calls ``generate_image`` through the MCP server, the server
  makes the image (here on a local fal emulator this script starts), and the model answers from the
  tool's result. The "model" is pydantic-ai's ``FunctionModel`` running ``scripted_llm`` below, so the
  run needs no network and no API key; everything else (tool schemas, the MCP session, the server,
  fal's protocol) is real;
* the server's progress notifications arriving while the tool runs, and what the model receives:
  pydantic-ai turns the tool result into text, the image preview (which a vision model sees) and the
  resource link.

To use a real model, change one line in ``main`` (and install its extra and set its key)::

    agent = Agent("anthropic:claude-sonnet-4-5", toolsets=[toolset])   # pip install "pydantic-ai-slim[anthropic]"

and for real images instead of emulated ones, give the server your ``FAL_KEY`` and drop
``FLUX_MCP_FAL_URL`` (see ``examples/stdio_client.py --real``).

Run it (from the repository root, in the project's virtualenv; pydantic-ai is not a fal-flux-mcp
dependency, install it yourself)::

    pip install "pydantic-ai-slim[mcp]"      # tested with 2.68.0 (it brings fastmcp-slim 4.x, for mcp 2.x)
    python examples/agent_pydantic_ai.py
    python examples/agent_pydantic_ai.py --prompt "a watercolour of a heron at dawn"

Images are saved in ``./fal-flux-mcp-output`` (``--output-dir``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio
from fastmcp.client.transports import StdioTransport
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import (
    BinaryContent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from fal_flux_mcp.emulator import Emulator, EmulatorConfig


def scripted_llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Stands in for the LLM: asks for ``generate_image`` once, then reports what the tool returned.

    A real model decides this from the tool descriptions the toolset sends (``info.function_tools``);
    this one follows a fixed script, so the run is deterministic and offline.
    """
    tool_names = {tool.name for tool in info.function_tools}
    if "generate_image" not in tool_names:
        return ModelResponse(
            parts=[TextPart(f"fal-flux-mcp offered no generate_image tool, only {sorted(tool_names)}")]
        )
    returns = [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name == "generate_image"
    ]
    if not returns:
        user_prompt = next(
            part.content
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, UserPromptPart) and isinstance(part.content, str)
        )
        arguments = {"prompt": user_prompt, "model": "fal-ai/flux/schnell", "aspect_ratio": "16:9"}
        return ModelResponse(parts=[ToolCallPart("generate_image", arguments)])
    # The tool returned its text summary, the image preview (which a vision model would look at)
    # and the resource link; answer with the summary, as a model typically would.
    content = returns[-1].content
    texts = [item for item in (content if isinstance(content, list) else [content]) if isinstance(item, str)]
    return ModelResponse(parts=[TextPart(f"Here is your image. {texts[0] if texts else ''}")])


async def run(prompt: str, env: dict[str, str]) -> None:
    started = time.monotonic()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        print(f"  [{time.monotonic() - started:5.2f}s] progress: {message or progress}")

    server = StdioTransport(command=sys.executable, args=["-m", "fal_flux_mcp", "serve"], env=env)
    toolset = MCPToolset(server, progress_handler=on_progress)
    # The one line to change for a real LLM: Agent("anthropic:claude-sonnet-4-5", toolsets=[toolset])
    agent = Agent(FunctionModel(scripted_llm), toolsets=[toolset])

    print(f"user: {prompt}")
    result = await agent.run(prompt)

    for message in result.all_messages():
        for part in message.parts:
            if isinstance(part, ToolCallPart):
                print(f"model called {part.tool_name}({part.args_as_dict()})")
            elif isinstance(part, ToolReturnPart):
                print(f"{part.tool_name} returned {describe(part.content)}")
    print(f"agent ({time.monotonic() - started:.2f}s): {result.output}")


def describe(content: object) -> str:
    """A one-line account of what a tool return holds."""
    items = content if isinstance(content, list) else [content]
    kinds = []
    for item in items:
        if isinstance(item, BinaryContent):
            kinds.append(f"{item.media_type} ({len(item.data):,} bytes)")
        elif isinstance(item, str):
            kinds.append(repr(item) if len(item) < 80 else f"text ({len(item)} chars)")
        else:
            kinds.append(type(item).__name__)
    return ", ".join(kinds)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="A pydantic-ai agent making an image through fal-flux-mcp, offline."
    )
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    parser.add_argument("--output-dir", type=Path, default=Path("fal-flux-mcp-output"))
    args = parser.parse_args()
    with (
        Emulator(EmulatorConfig(job_seconds=1.0)) as emulator,
        tempfile.TemporaryDirectory(prefix="fal-flux-mcp-agent-") as state_dir,
    ):
        print(f"fal emulator at {emulator.url} (offline, no account)")
        env = {
            "FAL_KEY": emulator.key,
            "FLUX_MCP_FAL_URL": emulator.url,
            "FLUX_MCP_OUTPUT_DIR": str(args.output_dir.expanduser().resolve()),
            "FLUX_MCP_STATE_DIR": state_dir,
            "FLUX_MCP_LOG_LEVEL": "WARNING",
        }
        anyio.run(run, args.prompt, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
