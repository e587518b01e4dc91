"""The server processes the benchmarks start: their environment, and which process, its CPU, its memory.

Linux only (``/proc``). The benchmark itself is the parent of every server it starts through the MCP
stdio client, so a server is found among this process's direct children.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def children() -> list[int]:
    """The pids of this process's direct children."""
    me = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me:
            found.append(int(stat.parent.name))
    return found


#: Children that are not the server under measurement (an emulator in its own process).
IGNORED: set[int] = set()


def only_child() -> int:
    """The one server this benchmark runs now."""
    pids = [pid for pid in children() if pid not in IGNORED]
    if len(pids) != 1:
        raise RuntimeError(f"expected one server process, found {pids}")
    return pids[0]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory_kib(pid: int, field: str = "VmHWM") -> int:
    """``VmHWM`` (peak resident memory) or ``VmRSS`` (resident now), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def server_env(url: str, key: str, home: Path) -> dict[str, str]:
    """The environment of a fal-flux-mcp server under benchmark: the emulator at ``url``, files in ``home``."""
    return {
        "FAL_KEY": key,
        "FLUX_MCP_FAL_URL": url,
        "FLUX_MCP_OUTPUT_DIR": str(home / "out"),
        "FLUX_MCP_STATE_DIR": str(home / "state"),
        "FLUX_MCP_LOG_LEVEL": "WARNING",
        # Hundreds of emulated jobs (no money): the default budgets would stop the second batch.
        "FLUX_MCP_DAILY_BUDGET_USD": "off",
        "FLUX_MCP_MAX_USD_PER_CALL": "off",
    }
