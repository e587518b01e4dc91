"""The examples in ``examples/``, run for real as their docstrings say, against a fal emulator on a free port.

``stdio_client.py`` and ``webhook_receiver.py`` run as subprocesses, as a user would run them, and the
tests check what a user sees: the exit status, the files written, the lines printed, the HTTP answers.
``agent_openai_agents.py`` runs with openai-agents' own MCP client, with the timeout it needs and with
its 5 s default. ``agent_pydantic_ai.py`` needs pydantic-ai, which is not a test dependency, so it is
not run here.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from PIL import Image

from fal_flux_mcp.emulator import Emulator
from tests.serving import serve_handler

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUN_TIMEOUT = 120.0  # seconds for one example run; a normal one takes two or three
WAIT = 30.0  # seconds for one expected event (a line printed, a webhook delivered)


def run_stdio_client(emulator: Emulator, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "stdio_client.py"), "--fal-url", emulator.url, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def field(output: str, label: str) -> str:
    """The value printed after ``label`` on its line."""
    match = re.search(rf"^\s*{re.escape(label)}\s*(\S+)\s*$", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return match.group(1)


# --------------------------------------------------------------------------------------------------
# agent_openai_agents.py


def run_openai_agents(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "agent_openai_agents.py"),
            "--output-dir",
            str(tmp_path / "out"),
            *args,
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_openai_agents_with_a_long_enough_timeout_gets_the_image(tmp_path: Path) -> None:
    completed = run_openai_agents(tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    saved = Path(field(completed.stdout, "saved to"))
    assert saved.is_file() and saved.parent == tmp_path / "out"
    assert "client_session_timeout_seconds=60" in (EXAMPLES / "agent_openai_agents.py").read_text()


def test_openai_agents_timing_out_leaves_the_running_job_to_finish_and_be_saved(tmp_path: Path) -> None:
    """Its call is cancelled after 1 s while fal runs the 3 s job: the image is still saved."""
    completed = run_openai_agents(tmp_path, "--timeout", "1", "--job-seconds", "3")
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "timed out" in completed.stdout
    (saved,) = (tmp_path / "out").glob("*.jpg")
    assert Path(field(completed.stdout, "saved anyway:")) == saved


# --------------------------------------------------------------------------------------------------
# stdio_client.py


def test_stdio_client_submits_follows_and_writes_the_image_it_read_as_a_resource(
    emulator: Emulator, tmp_path: Path
) -> None:
    # Long enough to still run when check_status first asks (submit_job alone can take 0.5 s on a
    # loaded machine): the progress it prints is what is checked.
    emulator.config.job_seconds = 1.5
    result = run_stdio_client(emulator, tmp_path, "--prompt", "a red fox in snow", "--output-dir", "images")

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "tools generate_image, edit_image, submit_job, check_status, cancel_job, upload_file, list_models"
        in out
    )
    assert "status: completed" in out
    assert re.search(r"\] (Generating|fal: .+)$", out, re.MULTILINE), "no progress was printed"
    written = Path(field(out, "written to:"))
    saved = Path(field(out, "saved by server:"))
    assert written.parent == saved.parent == tmp_path / "images"
    assert written.read_bytes() == saved.read_bytes()
    with Image.open(io.BytesIO(written.read_bytes())) as image:
        assert image.format == "JPEG"
        assert image.size == (1024, 768)  # schnell's default landscape_4_3
    assert emulator.counters["submit"] == 1


def test_stdio_client_reports_a_refused_call_and_exits_1(emulator: Emulator, tmp_path: Path) -> None:
    # Kontext edits an input image; without image_url the server refuses with an is_error result.
    result = run_stdio_client(emulator, tmp_path, "--model", "fal-ai/flux-pro/kontext")

    assert result.returncode == 1
    assert "error: submit_job refused:" in result.stderr
    assert "image_url" in result.stderr
    assert "Traceback" not in result.stderr
    assert emulator.counters["submit"] == 0  # nothing reached fal


def test_stdio_client_reports_a_failed_job_and_exits_1(emulator: Emulator, tmp_path: Path) -> None:
    result = run_stdio_client(emulator, tmp_path, "--prompt", "something forbidden")

    assert result.returncode == 1
    assert "status: failed" in result.stdout
    assert re.search(r"error: job \S+ failed: .*content checker", result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("fal-flux-mcp-output/*-via-resource.*"))


# --------------------------------------------------------------------------------------------------
# webhook_receiver.py


class Receiver:
    """``webhook_receiver.py`` running as a subprocess, its output read line by line."""

    def __init__(self, jwks_url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "webhook_receiver.py"), "--port", "0", "--jwks-url", jwks_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.expect(r"listening on (\S+)").group(1)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Wait (bounded) for a line matching ``pattern``; lines before it are skipped."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:  # the receiver exited
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        output = "\n".join(self.seen)
        raise AssertionError(f"receiver printed no line matching {pattern!r}; it printed:\n{output}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def receiver(emulator: Emulator) -> Iterator[Receiver]:
    running = Receiver(f"{emulator.url}/.well-known/jwks.json")
    try:
        yield running
    finally:
        running.stop()


Delivery = tuple[dict[str, str], bytes]


@contextmanager
def capturing_endpoint() -> Iterator[tuple[str, queue.Queue[Delivery]]]:
    """A plain HTTP endpoint that records each POST (headers, raw body): a genuine signed delivery."""
    captured: queue.Queue[Delivery] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            captured.put((dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_handler(Handler) as origin:
        yield f"{origin}/hook", captured


def genuine_delivery(emulator: Emulator) -> Delivery:
    """Have the emulator run a job and capture the signed webhook it sends."""
    with capturing_endpoint() as (url, captured):
        response = httpx.post(
            f"{emulator.url}/fal-ai/flux/schnell",
            params={"fal_webhook": url},
            headers={"Authorization": f"Key {emulator.key}"},
            json={"prompt": "a red fox"},
        )
        response.raise_for_status()
        return captured.get(timeout=WAIT)


SIGNATURE_HEADERS = (
    "X-Fal-Webhook-Request-Id",
    "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp",
    "X-Fal-Webhook-Signature",
)


def replay(url: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    wanted = {name: value for name, value in headers.items() if name.lower().startswith("x-fal-webhook-")}
    return httpx.post(url, content=body, headers={**wanted, "Content-Type": "application/json"}, timeout=WAIT)


def test_webhook_from_submit_job_is_verified_and_its_image_url_printed(
    emulator: Emulator, tmp_path: Path
) -> None:
    with receiver(emulator) as webhook:
        result = run_stdio_client(emulator, tmp_path, "--webhook-url", webhook.url)
        assert result.returncode == 0, result.stderr
        job_id = re.search(r"job (\S+): queued", result.stdout)
        assert job_id, result.stdout

        webhook.expect(rf"verified delivery for {re.escape(job_id.group(1))}: OK, 1 image\(s\)")
        printed = webhook.expect(r"image: (\S+)").group(1)
    assert printed == field(result.stdout, "fal URL:")


def test_webhook_receiver_rejects_tampered_unsigned_and_accepts_a_replay_once(emulator: Emulator) -> None:
    headers, body = genuine_delivery(emulator)
    assert all(name in headers for name in SIGNATURE_HEADERS)
    delivery = json.loads(body)
    tampered = json.dumps(
        {
            **delivery,
            "payload": {**delivery["payload"], "images": [{"url": "https://attacker.example/x.jpg"}]},
        }
    ).encode()

    with receiver(emulator) as webhook:
        response = replay(webhook.url, headers, tampered)
        assert response.status_code == 401
        webhook.expect(r"rejected delivery: signature does not match")

        response = replay(webhook.url, {}, body)
        assert response.status_code == 401
        webhook.expect(r"rejected delivery: missing header X-Fal-Webhook-Request-Id")

        response = replay(webhook.url, headers, body)
        assert response.status_code == 200
        webhook.expect(rf"verified delivery for {re.escape(delivery['request_id'])}: OK, 1 image\(s\)")
        webhook.expect(rf"image: {re.escape(delivery['payload']['images'][0]['url'])}")

        response = replay(webhook.url, headers, body)  # fal retries: acknowledged, not processed twice
        assert response.status_code == 200
        assert response.json() == {"ok": True, "duplicate": True}
        webhook.expect(r"duplicate delivery")
    assert "attacker.example" not in "\n".join(webhook.seen)


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_webhook_signature_check_rejects_timestamps_over_300_seconds_off(emulator: Emulator) -> None:
    example = load_example("webhook_receiver")
    headers, body = genuine_delivery(emulator)
    keys = example.public_keys(httpx.get(f"{emulator.url}/.well-known/jwks.json").json())
    headers = httpx.Headers(headers)  # case-insensitive, like the receiver's request headers
    sent_at = int(headers["X-Fal-Webhook-Timestamp"])

    assert example.verify_webhook(headers, body, keys, now=sent_at + 300) == json.loads(body)["request_id"]
    assert example.verify_webhook(headers, body, keys, now=sent_at - 300)
    for now in (sent_at + 301, sent_at - 301):
        with pytest.raises(example.InvalidWebhook, match="timestamp"):
            example.verify_webhook(headers, body, keys, now=now)
    with pytest.raises(example.InvalidWebhook, match="signature"):
        example.verify_webhook(headers, body, example.public_keys({"keys": []}), now=sent_at)
