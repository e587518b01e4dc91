"""Shared fixtures: the anyio backend, a fresh fal emulator per test, and settings that point at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fal_flux_mcp.emulator import Emulator, EmulatorConfig
from fal_flux_mcp.settings import Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator with short jobs; knobs may be changed through ``emulator.config``."""
    with Emulator(EmulatorConfig(job_seconds=0.2)) as emu:
        yield emu


@pytest.fixture
def settings(emulator: Emulator, tmp_path: Path) -> Settings:
    """fal-flux-mcp pointed at the emulator, with every directory under the test's own tmp_path."""
    (tmp_path / "allowed").mkdir()
    return Settings(
        fal_key=emulator.key,
        fal_url=emulator.url,
        output_dir=tmp_path / "out",
        state_dir=tmp_path / "state",
        allowed_dirs=[tmp_path / "allowed"],
        wait_seconds=10,
        retry_attempts=3,
        retry_base_delay=0.01,
        retry_max_delay=0.05,
    )
