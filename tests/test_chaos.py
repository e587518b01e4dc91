"""The chaos run: random SIGKILLs, restarts and fal faults lose no job and save no image twice."""

from __future__ import annotations

import random
from pathlib import Path

from fal_flux_mcp.emulator import Emulator
from tests.chaos import run_chaos


def test_chaos_loses_nothing_and_pays_nothing_twice(emulator: Emulator, tmp_path: Path) -> None:
    emulator.config.job_seconds = 0.3
    figures = run_chaos(emulator, tmp_path, seed=random.randrange(1_000_000))
    print(figures.line())
    assert figures.problems == [], figures.line()
    assert figures.jobs_on_fal > 0 and figures.kills + figures.faults > 0
