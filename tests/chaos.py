"""Chaos: jobs submitted to a stdio server that is SIGKILLed and restarted at random, with fal failing.

``run_chaos`` sends ``submit_job`` calls to the real server over stdio, arms a random fault before some
of them (429s, 5xx, dropped connections, a submit answer held back), and kills the server at random
moments, starting a new one on the same state folder each time. Then one last server settles every
job, and each job fal saw is checked: findable by ``check_status``, completed, each image saved exactly
once, no ``.part`` file left, and no input submitted twice. The figures say what happened.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fal_flux_mcp.emulator import Emulator
from tests.stdio_peer import PeerError, StdioPeer

#: Faults that fal really produces and that must cost the user nothing: (request kind, fault, delay).
FAULTS: list[tuple[str, str, float]] = [
    ("submit", "429", 0),
    ("submit", "502_nginx", 0),
    ("submit", "drop", 0),
    ("submit", "500_after", 0),
    ("submit", "slow", 1.5),
    ("stream", "429", 0),
    ("stream", "500", 0),
    ("stream", "drop", 0),
    ("status", "500", 0),
    ("status", "502_nginx", 0),
    ("result", "503_fal", 0),
    ("result", "500", 0),
    ("result", "drop", 0),
    ("file", "502_nginx", 0),
    ("file", "drop", 0),
]
#: How long one job may take to settle (its faults are cleared by then).
_SETTLE_SECONDS = 20.0


@dataclass
class Figures:
    """What one chaos run did and found; ``problems`` names each failure with its job and the faults."""

    seed: int
    jobs_sent: int = 0
    jobs_on_fal: int = 0
    kills: int = 0
    faults: int = 0
    lost: int = 0
    duplicates: int = 0
    missing_files: int = 0
    extra_files: int = 0
    part_files: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"seed {self.seed}: {self.jobs_sent} jobs sent, {self.jobs_on_fal} on fal, {self.kills} kills, "
            f"{self.faults} faults; lost {self.lost}, duplicates {self.duplicates}, missing files "
            f"{self.missing_files}, extra files {self.extra_files}, .part files {self.part_files} "
            f"({self.seconds:.1f} s)"
        )


def run_chaos(emulator: Emulator, folder: Path, *, seed: int, jobs: int = 30) -> Figures:
    """One chaos run against ``emulator``, with the server's folders under ``folder``."""
    rng = random.Random(seed)
    figures = Figures(seed=seed)
    started = time.monotonic()
    env = {
        "FAL_KEY": emulator.key,
        "FLUX_MCP_FAL_URL": emulator.url,
        "FLUX_MCP_STATE_DIR": str(folder / "state"),
        "FLUX_MCP_OUTPUT_DIR": str(folder / "out"),
        "FLUX_MCP_RETRY_BASE_DELAY": "0.02",
        "FLUX_MCP_RETRY_MAX_DELAY": "0.5",
    }
    faults_by_prompt: dict[str, list[str]] = {}
    peers: list[StdioPeer] = []

    def start() -> StdioPeer:
        peer = StdioPeer(env, folder / "stderr.log")
        peers.append(peer)
        peer.initialize()
        return peer

    try:
        peer = start()
        unanswered: list[str] = []  # the live server's submits, answered or not
        for number in range(jobs):
            prompt = f"chaos {seed} job {number}"
            armed: list[str] = []
            if rng.random() < 0.5:
                kind, fault, delay = rng.choice(FAULTS)
                emulator.inject(kind, fault, count=1, delay=delay)
                armed.append(f"{kind}:{fault}")
                figures.faults += 1
            faults_by_prompt[prompt] = armed
            arguments = {"prompt": prompt, "model": "fal-ai/flux/schnell", "seed": number}
            peer.start_request(
                f"submit-{number}", "tools/call", {"name": "submit_job", "arguments": arguments}
            )
            unanswered.append(f"submit-{number}")
            figures.jobs_sent += 1
            time.sleep(rng.uniform(0, 0.2))  # the pace of an agent's calls, random so kills land anywhere
            if rng.random() < 0.2:
                peer.kill()
                figures.kills += 1
                peer = start()
                unanswered = []
        emulator.clear_faults()
        for request_id in unanswered:  # what fal has is counted once the live server's submits are done
            peer.answer(request_id)
        _settle(
            start() if peer.process.poll() is not None else peer, emulator, folder, figures, faults_by_prompt
        )
    finally:
        for each in peers:
            each.stop()
    figures.seconds = time.monotonic() - started
    return figures


def _settle(
    peer: StdioPeer, emulator: Emulator, folder: Path, figures: Figures, faults: dict[str, list[str]]
) -> None:
    """Follow every job fal saw to the end through ``check_status``, and check what the user has."""
    on_fal = emulator.jobs()
    figures.jobs_on_fal = len(on_fal)
    prompts = Counter(job.input.get("prompt") for job in on_fal)
    for prompt, count in prompts.items():
        if count > 1:
            figures.duplicates += count - 1
            figures.problems.append(f"{prompt!r} was submitted {count} times (faults: {faults.get(prompt)})")
    saved: list[Path] = []
    for number, job in enumerate(on_fal):
        prompt = job.input.get("prompt")
        result = None
        deadline = time.monotonic() + _SETTLE_SECONDS
        while time.monotonic() < deadline:
            try:
                result = peer.call_tool(
                    f"settle-{number}-{time.monotonic_ns()}",
                    "check_status",
                    {"job_id": job.request_id, "wait_seconds": 5},
                )
            except PeerError as exc:
                figures.problems.append(f"job {job.request_id} ({prompt!r}): {exc}")
                break
            if not result.get("isError") and result["structuredContent"]["status"] == "completed":
                break
        if result is None or result.get("isError") or result["structuredContent"]["status"] != "completed":
            figures.lost += 1
            text = result and result["content"][0].get("text", "")[:300]
            figures.problems.append(f"job {job.request_id} ({prompt!r}, faults {faults.get(prompt)}): {text}")
            if figures.lost == 1:
                figures.problems.append(f"the server's log ends:\n{peer.stderr()}")
            continue
        for image in result["structuredContent"]["images"]:
            if image["path"] and Path(image["path"]).is_file():
                saved.append(Path(image["path"]))
            else:
                figures.missing_files += 1
                figures.problems.append(
                    f"job {job.request_id} ({prompt!r}, faults {faults.get(prompt)}): no file"
                )
    out = folder / "out"
    files = sorted(p for p in out.glob("*") if not p.name.startswith(".")) if out.is_dir() else []
    figures.extra_files = len(set(files) - set(saved))
    if figures.extra_files:
        figures.problems.append(
            f"files saved more than once or for no job: {sorted(set(files) - set(saved))}"
        )
    figures.part_files = len(list(out.glob(".*.part"))) if out.is_dir() else 0
    if figures.part_files:
        figures.problems.append(f"{figures.part_files} .part files left in {out}")
