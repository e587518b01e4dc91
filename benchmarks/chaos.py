"""Chaos figures over several runs: jobs, kills, faults, lost, duplicates, missing files.

Each run is the suite's chaos test (``tests/chaos.py``): 30 ``submit_job`` calls to a stdio server
that is SIGKILLed and restarted at random while the emulator injects fal's faults. Run from the
repository root: ``python benchmarks/chaos.py --runs 5``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fal_flux_mcp.emulator import Emulator, EmulatorConfig
from tests.chaos import run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=30)
    args = parser.parse_args()
    failed = 0
    totals = {"jobs": 0, "kills": 0, "faults": 0, "lost": 0, "duplicates": 0, "missing": 0}
    for _ in range(args.runs):
        seed = random.randrange(1_000_000)
        with tempfile.TemporaryDirectory() as folder, Emulator(EmulatorConfig(job_seconds=0.3)) as emulator:
            figures = run_chaos(emulator, Path(folder), seed=seed, jobs=args.jobs)
        print(figures.line())
        for problem in figures.problems:
            print("   ", problem)
        failed += bool(figures.problems)
        totals["jobs"] += figures.jobs_on_fal
        totals["kills"] += figures.kills
        totals["faults"] += figures.faults
        totals["lost"] += figures.lost
        totals["duplicates"] += figures.duplicates
        totals["missing"] += figures.missing_files + figures.extra_files + figures.part_files
    print("total:", ", ".join(f"{name} {value}" for name, value in totals.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
