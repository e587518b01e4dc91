"""The server as a real stdio subprocess, spoken to one JSON-RPC line at a time, as an MCP client does.

Tests that must kill the server (SIGKILL mid-job) or send what no SDK client would send use this
instead of ``mcp.Client``: the process is theirs to kill, and every line on stdout is checked to be
one whole JSON-RPC message. Stdout is drained by a thread; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: How the stdio server is started: the real command, as a client's configuration runs it.
SERVER_COMMAND: list[str] = [sys.executable, "-m", "fal_flux_mcp", "serve"]
#: Upper bound on the wait for any one reply; a passing test never waits it out.
REPLY_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parent.parent


class PeerError(AssertionError):
    """The server did not answer as an MCP server must."""


class StdioPeer:
    """One server process; ``env`` is added to a clean copy of this process's environment."""

    def __init__(self, env: dict[str, str], stderr_path: Path) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "FLUX_MCP_"))}
        self.stderr_path = stderr_path
        with stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                SERVER_COMMAND,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=inherited | env,
                cwd=REPO,
            )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self._pending: dict[object, dict[str, Any]] = {}
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, line: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + b"\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The next message on stdout; every line there must be one whole JSON-RPC object."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise PeerError(f"no message within {timeout} s; stderr:\n{self.stderr()}") from None
        if line is None:
            raise PeerError(
                f"the server closed stdout (exit code {self.process.poll()}); stderr:\n{self.stderr()}"
            )
        message = json.loads(line)
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise PeerError(f"not a JSON-RPC message: {line[:200]!r}")
        return message

    def start_request(self, request_id: object, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a request without waiting for its answer (``answer`` collects it later)."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(json.dumps(message).encode())

    def answer(self, request_id: object, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The answer to ``request_id``; notifications and other answers met on the way are kept."""
        deadline = time.monotonic() + timeout
        while request_id not in self._pending:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if "id" in message and ("result" in message or "error" in message):
                self._pending[message["id"]] = message
        return self._pending.pop(request_id)

    def request(
        self, request_id: object, method: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        self.start_request(request_id, method, params)
        return self.answer(request_id)

    def call_tool(self, request_id: object, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """``tools/call``: the CallToolResult as JSON (``isError``, ``structuredContent``, ...)."""
        reply = self.request(request_id, "tools/call", {"name": name, "arguments": arguments})
        if "result" not in reply:
            raise PeerError(f"tools/call {name} got a protocol error: {reply}")
        return reply["result"]

    def initialize(self) -> None:
        """The MCP handshake: initialize, then notifications/initialized."""
        client = {"name": "test", "version": "1"}
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client}
        answer = self.request("init", "initialize", params)
        if "result" not in answer:
            raise PeerError(f"initialize failed: {answer}")
        self.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as a crash or an OOM kill."""
        self.process.kill()
        self.process.wait(timeout=REPLY_TIMEOUT)

    def stop(self) -> int:
        """Close stdin (how a client ends the session) and wait; kill if it does not exit."""
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
            return self.process.wait(timeout=REPLY_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return -1
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]
