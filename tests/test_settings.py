"""Settings a user gets wrong: the server says so at start, in the variables' own names, all at once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from fal_flux_mcp.settings import Settings
from tests.serving import bind_free_port

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = "<your fal key, key_id:key_secret, from fal.ai/dashboard/keys>"


def run_cli(*args: str, env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    """The real command, with a clean environment: only what the test sets, and a home of its own."""
    return subprocess.run(
        [sys.executable, "-m", "fal_flux_mcp", *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), **env},
        stdin=subprocess.DEVNULL,  # a stdio server that did start would end at once, not hang
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def broken_env(tmp_path: Path) -> dict[str, str]:
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a folder")
    return {
        "FLUX_MCP_WAIT_SECONDS": "abc",
        "FLUX_MCP_FAL_URL": "not-a-url",
        "FLUX_MCP_OUTPUT_DIR": str(a_file),
        "FLUX_MCP_STATE_DIR": "relative/state",
        "FLUX_MCP_ALLOWED_DIRS": f"pictures{os.pathsep}{tmp_path}",
        "FAL_KEY": "abc123-real-looking:secret-value-xyz",
        "FLUX_MCP_DATABASE_URL": "mysql://flux:db-password-xyz@db/flux",
    }


@pytest.mark.parametrize("command", [["serve"], []], ids=["serve", "no-subcommand"])
def test_serve_refuses_bad_settings_naming_each_variable_value_and_fix(
    broken_env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    completed = run_cli(*command, env=broken_env, home=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""  # stdout belongs to the protocol
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    problems = [line.strip() for line in lines[1:]]
    assert "6 problems" in lines[0]
    assert len(problems) == 6, completed.stderr
    wants = {
        "FLUX_MCP_WAIT_SECONDS='abc'": "a number greater than 0 and at most 3600",
        "FLUX_MCP_FAL_URL='not-a-url'": "http(s) origin",
        f"FLUX_MCP_OUTPUT_DIR={broken_env['FLUX_MCP_OUTPUT_DIR']!r}": "is a file",
        "FLUX_MCP_STATE_DIR='relative/state'": "absolute path",
        "FLUX_MCP_ALLOWED_DIRS": "'pictures' is relative",
        "FLUX_MCP_DATABASE_URL=(hidden)": "must start with postgresql://",
    }
    for variable, fix in wants.items():
        assert any(line.startswith(variable) and fix in line for line in problems), (variable, problems)
    assert "wait_seconds" not in completed.stderr and "fal_url" not in completed.stderr
    assert "secret-value-xyz" not in completed.stderr and "db-password-xyz" not in completed.stderr


def test_an_unreachable_database_stops_the_start_in_words_without_its_password(tmp_path: Path) -> None:
    sock = bind_free_port()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    env = {"FLUX_MCP_DATABASE_URL": f"postgresql://flux:db-password-xyz@127.0.0.1:{port}/flux"}
    completed = run_cli("serve", env=env, home=tmp_path)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr
    assert (
        "not starting: the job journal's PostgreSQL database (FLUX_MCP_DATABASE_URL) cannot be reached"
        in (completed.stderr)
    )
    assert "db-password-xyz" not in completed.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, unwritable even to root")
def test_an_unwritable_output_folder_and_an_uncreatable_state_folder_stop_the_start(tmp_path: Path) -> None:
    # /proc is a folder no one, root included, can write in: os.access alone would say yes to root.
    env = {"FLUX_MCP_OUTPUT_DIR": "/proc", "FLUX_MCP_STATE_DIR": "/proc/fal-flux-mcp-state"}
    completed = run_cli("serve", env=env, home=tmp_path)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert re.search(r"FLUX_MCP_OUTPUT_DIR='/proc' is not writable", completed.stderr), completed.stderr
    assert re.search(r"FLUX_MCP_STATE_DIR='/proc/fal-flux-mcp-state' cannot be created", completed.stderr), (
        completed.stderr
    )


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_stops_the_start(tmp_path: Path) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        completed = run_cli("serve", env={"FLUX_MCP_OUTPUT_DIR": str(read_only)}, home=tmp_path)
    finally:
        read_only.chmod(0o755)
    assert completed.returncode == 2
    assert f"FLUX_MCP_OUTPUT_DIR={str(read_only)!r} is not writable" in completed.stderr


def test_config_warns_about_the_same_problems_and_still_prints_the_entry(
    broken_env: dict[str, str], tmp_path: Path
) -> None:
    completed = run_cli("config", env=broken_env, home=tmp_path)
    assert completed.returncode == 0 and "Traceback" not in completed.stderr
    assert '"mcpServers"' in completed.stdout
    warnings = [line for line in completed.stderr.splitlines() if line.startswith("fal-flux-mcp: warning:")]
    for variable in (
        "FLUX_MCP_WAIT_SECONDS",
        "FLUX_MCP_FAL_URL",
        "FLUX_MCP_OUTPUT_DIR",
        "FLUX_MCP_STATE_DIR",
    ):
        assert any(variable in line for line in warnings), (variable, completed.stderr)
    assert "secret-value-xyz" not in completed.stderr + completed.stdout


@pytest.mark.parametrize(
    ("command", "extra", "code"),
    [("config", {}, 0), ("serve", {"FLUX_MCP_WAIT_SECONDS": "abc"}, 2)],
    ids=["config", "serve-that-will-not-start"],
)
def test_checking_creates_no_folder_unless_the_server_starts(
    tmp_path: Path, command: str, extra: dict[str, str], code: int
) -> None:
    env = {
        "FLUX_MCP_OUTPUT_DIR": str(tmp_path / "out" / "images"),
        "FLUX_MCP_STATE_DIR": str(tmp_path / "st"),
    }
    completed = run_cli(command, env={**env, **extra}, home=tmp_path)
    assert completed.returncode == code and "FLUX_MCP_OUTPUT_DIR" not in completed.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "st").exists()
    assert not (tmp_path / "Pictures").exists()


@pytest.mark.parametrize(
    "key",
    [PLACEHOLDER, "paste-your-key-here", "id:secret with spaces"],
    ids=["placeholder", "no-colon", "blanks"],
)
def test_serve_warns_at_start_about_a_key_that_cannot_be_one_without_quoting_it(
    tmp_path: Path, key: str
) -> None:
    env = {"FAL_KEY": key, "FLUX_MCP_STATE_DIR": str(tmp_path / "state")}
    completed = run_cli("serve", env=env, home=tmp_path)
    assert completed.returncode == 0, completed.stderr  # it still starts: list_models needs no key
    warning = next(line for line in completed.stderr.splitlines() if "FAL_KEY (hidden)" in line)
    assert "fal.ai/dashboard/keys" in warning and "nothing will be sent to fal" in warning
    assert key not in completed.stderr


def test_a_copied_mcp_json_placeholder_for_allowed_dirs_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    env = {
        "FLUX_MCP_ALLOWED_DIRS": "<folders upload_file and local image_url may read, e.g. /Users/you/Pictures>",
        "FLUX_MCP_STATE_DIR": str(tmp_path / "state"),
    }
    completed = run_cli("serve", env=env, home=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "FLUX_MCP_ALLOWED_DIRS is still the placeholder" in completed.stderr


def test_top_level_help_lists_every_variable_with_its_default(tmp_path: Path) -> None:
    completed = run_cli("--help", env={}, home=tmp_path)
    assert completed.returncode == 0
    for field in Settings.model_fields:
        assert Settings.env_name(field) in completed.stdout, field
    assert "FLUX_MCP_WAIT_SECONDS  (default: 45)" in completed.stdout
    assert "FLUX_MCP_LOG_LEVEL  (default: INFO)" in completed.stdout
    assert f"FLUX_MCP_OUTPUT_DIR  (default: {tmp_path}" in completed.stdout


@pytest.mark.parametrize(
    ("command", "shown"),
    [("serve", "(default: 8000)"), ("emulator", "(default: 8765)"), ("config", "(default: flux)")],
)
def test_each_command_help_shows_its_defaults(tmp_path: Path, command: str, shown: str) -> None:
    completed = run_cli(command, "--help", env={}, home=tmp_path)
    assert completed.returncode == 0 and shown in completed.stdout


def test_readme_configuration_table_lists_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## The fal emulator")]
    for field in Settings.model_fields:
        assert f"`{Settings.env_name(field)}`" in table, field


@pytest.mark.parametrize("url", ["not-a-url", "ftp://example.com", "http://127.0.0.1:8765/some/path"])
def test_fal_url_must_be_an_http_origin(url: str) -> None:
    with pytest.raises(ValidationError, match="http"):
        Settings(fal_url=url)
    assert Settings(fal_url="http://127.0.0.1:8765/").fal_url == "http://127.0.0.1:8765/"
