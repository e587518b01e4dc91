"""The project's name: ``flux-mcp`` on PyPI is someone else's, so nothing here may point users at it."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: ``flux-mcp`` or ``flux_mcp`` as a word of its own, not inside ``fal-flux-mcp``/``fal_flux_mcp``/``FLUX_MCP_``.
_OLD_NAME = re.compile(r"(?<![\w-])flux[-_]mcp(?![\w-])")


def test_the_distribution_script_and_package_carry_the_new_name() -> None:
    dist = distribution("fal-flux-mcp")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"fal-flux-mcp": "fal_flux_mcp._cli:main"}


def _lines() -> list[tuple[str, int, str]]:
    """Every line of every file in the repository (tracked, or new and not ignored), but this one."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = []
    for name in tracked:
        path = ROOT / name
        if not path.is_file() or name == "tests/test_name.py":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found.extend((name, number, line) for number, line in enumerate(text.splitlines(), 1))
    return found


def test_no_file_in_the_repository_tells_anyone_to_install_or_run_flux_mcp() -> None:
    # The one allowed mention: the old state folder, still read so that its jobs are not lost.
    offenders = [
        f"{name}:{number}: {line.strip()}"
        for name, number, line in _lines()
        if _OLD_NAME.search(line) and "legacy" not in line
    ]
    assert offenders == []


def test_nothing_refers_to_files_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|shared/(fal-protocol|mcp-sdk|landscape)\.md")
    offenders = [
        f"{name}:{number}: {line.strip()}" for name, number, line in _lines() if outside.search(line)
    ]
    assert offenders == []
