"""The ``fal-flux-mcp`` commands a user types: serving and stopping, the demo and the standalone emulator."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

from fal_flux_mcp.emulator import DEFAULT_KEY
from fal_flux_mcp.fal import FalClient


def test_demo_makes_an_image_offline_and_says_where_it_is(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fal_flux_mcp",
            "demo",
            "--output-dir",
            str(tmp_path),
            "--model",
            "fal-ai/flux/schnell",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr
    saved = re.search(r"saved to (\S+)", completed.stdout)
    assert saved, completed.stdout
    assert Path(saved.group(1)).is_file() and Path(saved.group(1)).parent == tmp_path
    assert "Submitted job" in completed.stdout and "status completed" in completed.stdout


@pytest.mark.anyio
async def test_the_emulator_command_serves_fal_on_the_given_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "fal_flux_mcp", "emulator", "--port", str(port), "--job-seconds", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # bounded by the process: it prints its address once listening
            if str(port) in line:
                break
        else:
            pytest.fail("the emulator exited without listening")
        async with FalClient(DEFAULT_KEY, base_url=f"http://127.0.0.1:{port}") as client:
            handle = await client.submit("fal-ai/flux/schnell", {"prompt": "x"})
            output = await client.wait(handle)
        async with httpx.AsyncClient() as http:
            assert (await http.get(output.images[0].url)).headers["content-type"] == "image/jpeg"
    finally:
        process.terminate()
        process.wait(10)


def test_the_demo_saves_into_a_new_folder_of_its_own_never_the_output_dir(tmp_path: Path) -> None:
    pictures = tmp_path / "Pictures"
    (tmp_path / "tmp").mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "fal_flux_mcp", "demo", "--model", "fal-ai/flux/schnell"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path / "tmp"),
            "FLUX_MCP_OUTPUT_DIR": str(pictures),
        },
    )
    assert completed.returncode == 0, completed.stderr
    folder = re.search(r"saving into (\S+)", completed.stdout)
    saved = re.search(r"saved to (\S+)", completed.stdout)
    assert folder and saved, completed.stdout
    assert Path(saved.group(1)).parent == Path(folder.group(1))
    assert Path(folder.group(1)).parent == (tmp_path / "tmp").resolve()  # a new temporary folder
    assert not pictures.exists()
    assert "placeholder picture, not your prompt" in completed.stdout


# ---------------------------------------------------------------------------------------------------
# Serving: where it is, and stopping it


class Lines:
    """A process's output, read in a thread: waiting for a line then has a deadline even if it never comes."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first line from now on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout} s:\n{''.join(self.seen)}")
            if line is None:
                pytest.fail(f"exited without a line matching {pattern!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if (found := re.search(pattern, line)) is not None:
                return found

    def rest(self, timeout: float = 10) -> str:
        """Everything printed until the stream closed (call once the process has exited)."""
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@contextmanager
def running(
    args: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """``python -m fal_flux_mcp <args>``, its stderr (and stdout) read line by line; always ended."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fal_flux_mcp", *args],
        stdin=subprocess.PIPE,  # held open, as an MCP client holds it: only a signal ends a stdio server
        stdout=subprocess.DEVNULL if args[0] == "serve" else subprocess.PIPE,
        stderr=subprocess.PIPE if args[0] == "serve" else subprocess.STDOUT,
        text=True,
        env=env,
    )
    stream = process.stderr if args[0] == "serve" else process.stdout
    assert stream is not None
    try:
        yield process, Lines(stream)
    finally:
        if process.poll() is None:
            process.terminate()  # what a supervisor sends; the emulator deletes its files on it
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAL_KEY": "test-id:test-secret",
        "FLUX_MCP_STATE_DIR": str(tmp_path / "state"),
        **extra,
    }


def stop(process: subprocess.Popen[str], lines: Lines, sig: signal.Signals) -> tuple[int, str]:
    """Send one signal; the server must be gone within a bounded time, not waiting for a second one."""
    process.send_signal(sig)
    try:
        code = process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server was still running 15 s after one {sig.name}")
    return code, lines.rest()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stdio_server_says_so_and_stops_cleanly_on_one_signal(tmp_path: Path, sig: signal.Signals) -> None:
    with running(["serve"], server_env(tmp_path)) as (process, lines):
        assert "stdio" in lines.wait_for("serving MCP").string
        # Signalled once its journal exists, i.e. once really serving, not while still importing.
        wait_until(lambda: (tmp_path / "state" / "jobs.sqlite3").exists(), 30, "the journal")
        code, printed = stop(process, lines, sig)
    assert code == 0, printed
    assert "Traceback" not in printed and "KeyboardInterrupt" not in printed
    assert "stopped" in printed


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_http_server_prints_its_url_and_stops_cleanly_on_one_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    args = ["serve", "--transport", "streamable-http", "--port", str(port)]
    with running(args, server_env(tmp_path)) as (process, lines):
        line = lines.wait_for("serving MCP").string
        assert f"http://127.0.0.1:{port}/mcp" in line and "streamable-http" in line
        assert "no token required" in line
        wait_until(lambda: accepts(port), 30, "the port")
        with gallery_tab(port):  # a live-update stream, which never ends by itself, does not hold it up
            code, printed = stop(process, lines, sig)
    assert code == 0, printed
    assert "Traceback" not in printed and "KeyboardInterrupt" not in printed


@contextmanager
def gallery_tab(port: int) -> Iterator[None]:
    """An open /gallery/events stream, as a browser tab on the gallery holds one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as tab:
        tab.sendall(f"GET /gallery/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        received = b""
        while b"retry:" not in received:
            chunk = tab.recv(4096)
            assert chunk, f"the stream closed at once: {received!r}"
            received += chunk
        yield


def test_sse_server_line_names_its_endpoint_and_the_token_without_quoting_it(tmp_path: Path) -> None:
    port = free_port()
    env = server_env(tmp_path, FLUX_MCP_HTTP_TOKEN="sesame-1234")
    with running(["serve", "--transport", "sse", "--port", str(port)], env) as (process, lines):
        line = lines.wait_for("serving MCP").string
        assert f"http://127.0.0.1:{port}/sse" in line
        assert "bearer token (FLUX_MCP_HTTP_TOKEN) is required" in line
        wait_until(lambda: accepts(port), 30, "the port")
        code, printed = stop(process, lines, signal.SIGINT)
    assert code == 0 and "sesame-1234" not in printed


# ---------------------------------------------------------------------------------------------------
# The emulator command, as someone testing their own code starts it


@contextmanager
def emulator_process(*options: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """``fal-flux-mcp emulator --port 0 ...`` listening; yields its URL and its announcement."""
    args = ["emulator", "--port", "0", "--job-seconds", "0.05", *options]
    with running(args, env) as (_process, lines):
        url = lines.wait_for(r"listening on (http://\S+?);").group(1)
        lines.wait_for("your own code")  # the last line of the announcement
        yield url, "".join(lines.seen)


def test_the_emulator_command_prints_its_url_and_takes_the_key_it_was_given(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    with emulator_process("--key", "team-id:team-secret", env=env) as (url, printed):
        assert "only the key team-id:team-secret" in printed
        assert f"FLUX_MCP_FAL_URL={url} FAL_KEY=team-id:team-secret" in printed
        with httpx.Client(base_url=url) as http:
            refused = http.post(
                "/fal-ai/flux/schnell", json={"prompt": "x"}, headers={"Authorization": f"Key {DEFAULT_KEY}"}
            )
            taken = http.post(
                "/fal-ai/flux/schnell",
                json={"prompt": "x"},
                headers={"Authorization": "Key team-id:team-secret"},
            )
    assert refused.status_code == 401 and "team-id:team-secret" in refused.json()["detail"]
    assert taken.status_code == 200
    assert not list(tmp_path.glob("fal-flux-mcp-emulator-*"))  # stopped by SIGTERM, its files deleted


def readme_snippet() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## The fal emulator") : readme.index("## The fal client")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the emulator section should show exactly one Python example"
    return blocks[0]


@pytest.mark.parametrize(
    ("options", "key"),
    [((), DEFAULT_KEY), (("--any-key",), "someone-id:someone-secret")],
    ids=["default-key", "any-key"],
)
def test_the_readme_fal_client_example_makes_an_image_on_the_emulator(
    tmp_path: Path, options: tuple[str, ...], key: str
) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(readme_snippet())
    with emulator_process(*options) as (url, _):
        completed = subprocess.run(
            [sys.executable, str(script)],
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FAL_KEY": key, "FLUX_MCP_FAL_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 0, completed.stderr
        image_url = completed.stdout.strip()
        assert image_url.startswith(f"{url}/files/")
        assert httpx.get(image_url).headers["content-type"] == "image/jpeg"
