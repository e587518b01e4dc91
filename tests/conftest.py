"""Shared fixtures: the anyio backend and a fresh fal emulator per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flux_mcp.emulator import Emulator, EmulatorConfig


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator with short jobs; knobs may be changed through ``emulator.config``."""
    with Emulator(EmulatorConfig(job_seconds=0.2)) as emu:
        yield emu
