"""Running the emulator: a real uvicorn server, in a background thread or in the foreground.

uvicorn's own stop path polls every 100 ms and then waits another 100 ms, which would make every
test that starts an emulator pay a quarter of a second. ``_Server`` waits on an event instead and
shuts down in milliseconds: it ends status streams, closes idle connections, gives busy ones a
short grace and then cuts them off.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fal_flux_mcp.emulator._app import build_app
from fal_flux_mcp.emulator._config import EmulatorConfig
from fal_flux_mcp.emulator._core import Core, JobInfo
from fal_flux_mcp.emulator._responses import DROP_EXTENSION

log = logging.getLogger("fal_flux_mcp.emulator")


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol plus one ability: closing the connection without answering."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope.setdefault("extensions", {})[DROP_EXTENSION] = self._drop
            await inner(scope, receive, send)

        self.app = app

    def _drop(self) -> None:
        if self.cycle is not None:
            # uvicorn then neither sends its own 500 nor complains about a missing response.
            self.cycle.disconnected = True
            self.cycle.keep_alive = False
        self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server with a prompt, event-driven stop."""

    def __init__(
        self, config: uvicorn.Config, core: Core, on_started: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self._core = core
        self._on_started = on_started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.on_tick(0)  # sets the Date/Server default headers once
        if self._on_started is not None:
            self._on_started()
        if not self.should_exit:
            await self._stop.wait()

    def request_stop(self) -> None:
        """Ask the server to stop; safe from any thread."""
        self.should_exit = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.request_stop()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._core.begin_shutdown()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        deadline = time.monotonic() + self._core.config.shutdown_grace_seconds
        # uvicorn signals nothing when its last connection closes, so this one wait polls.
        while self.server_state.connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        for task in list(self.server_state.tasks):
            task.cancel()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        await self.lifespan.shutdown()


def _uvicorn_config(core: Core, *, quiet: bool, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        build_app(core),
        lifespan="on",
        http=_Protocol,
        ws="none",
        access_log=not quiet,
        log_level="warning" if quiet else "info",
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=core.config.shutdown_grace_seconds,
        **kwargs,
    )


class Emulator:
    """The fal emulator on a free loopback port, in a background thread, for tests and demos.

    ``with Emulator(EmulatorConfig(job_seconds=0.2)) as emu:`` then point a client at ``emu.url``
    with ``emu.key``. Knobs in ``emu.config`` may be changed while it runs.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self._host = host
        self._port = port
        self._startup_timeout = startup_timeout
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._core: Core | None = None
        self._tmp: Path | None = None
        self._error: BaseException | None = None
        self._bound_port: int | None = None

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    def start(self) -> Emulator:
        """Start serving; returns once the server accepts connections (or raises why it cannot)."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        self._tmp = Path(tempfile.mkdtemp(prefix="fal-flux-mcp-emulator-"))
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio only disables Nagle on sockets that say so, and with
        # Nagle on, every keep-alive response waits 40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._bound_port = sock.getsockname()[1]
        self._core = Core(self.config, self._tmp)
        self._server = _Server(_uvicorn_config(self._core, quiet=True), self._core, self._started.set)
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name="fal-flux-mcp-emulator", daemon=True
        )
        self._thread.start()
        if (
            not self._started.wait(self._startup_timeout)
            or self._error is not None
            or not self._server.started
        ):
            error = self._error
            self.stop()
            raise RuntimeError(f"fal emulator did not start: {error!r}") from error
        return self

    def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            asyncio.run(self._server.serve(sockets=[sock]))
        except BaseException as exc:  # reported to start(), which is waiting
            self._error = exc
        finally:
            sock.close()
            self._started.set()

    def stop(self) -> None:
        """Stop the server, join its thread and delete its files. Idempotent."""
        if self._server is not None:
            self._server.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=self.config.shutdown_grace_seconds + 5.0)
            if self._thread.is_alive():
                log.warning("fal emulator thread did not stop in time")
        self._thread = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------
    # For clients and tests

    @property
    def url(self) -> str:
        """The origin standing in for every fal host, e.g. ``http://127.0.0.1:54321``."""
        if self._bound_port is None:
            raise RuntimeError("emulator not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._bound_port}"

    @property
    def key(self) -> str:
        """A key the emulator accepts."""
        return self.config.key

    @property
    def counters(self) -> collections.Counter[str]:
        """Requests received, by kind (``submit``, ``status``, ``upload``...), faulted ones included."""
        return self._running_core().counters

    def reset_counters(self) -> None:
        """Forget the requests counted so far."""
        self._running_core().counters.clear()

    def inject(
        self, kind: str, fault: str, count: int = 1, retry_after: float | None = None, delay: float = 0.0
    ) -> None:
        """Make the next ``count`` requests of ``kind`` (or ``"any"``) fail with ``fault``.

        Faults: ``"429"`` (``Retry-After`` only when ``retry_after`` is given), ``"502_nginx"`` (an
        HTML ingress error without ``x-fal-request-id``: clients retry it), ``"503_fal"`` and
        ``"500"`` (JSON errors from fal itself: a submit answered so may or may not have been
        queued), ``"500_after"`` (process the request, then answer that 500: a submit did create its
        job), ``"404"`` (a file fal no longer keeps), ``"slow"`` (answer
        after ``delay`` seconds), ``"drop"`` (process the request, then close the connection
        unanswered: a submit *did* create its job) and ``"drop_before"`` (close it without
        processing anything).
        """
        self._running_core().faults.arm(kind, fault, count, retry_after, delay)

    def expire_file(self, url: str) -> None:
        """Make a file this emulator serves (generated or uploaded) gone for good, as fal's CDN drops
        files after a while: its URL answers 404 from now on. A ``KeyError`` for a file it never had."""
        core = self._running_core()
        assert core.loop is not None
        key = unquote(urlsplit(url).path.removeprefix("/files/"))

        async def remove() -> bool:
            if (rendering := core.pending_files.get(key)) is not None:
                await asyncio.shield(rendering)
            return core.files.remove(key)

        if not asyncio.run_coroutine_threadsafe(remove(), core.loop).result(timeout=5.0):
            raise KeyError(f"the emulator serves no file at {url}")

    def clear_faults(self) -> None:
        """Disarm every injected fault not yet used."""
        self._running_core().faults.clear()

    def job(self, request_id: str) -> JobInfo:
        """A snapshot of a job (a ``KeyError`` for an unknown id)."""
        core = self._running_core()
        assert core.loop is not None

        async def snapshot() -> JobInfo:
            return core.job_info(request_id)

        return asyncio.run_coroutine_threadsafe(snapshot(), core.loop).result(timeout=5.0)

    def jobs(self) -> list[JobInfo]:
        """Snapshots of every job received so far, oldest first (e.g. to tell whether a dropped
        submit created one)."""
        core = self._running_core()
        assert core.loop is not None

        async def snapshot() -> list[JobInfo]:
            return [core.job_info(request_id) for request_id in list(core.store.jobs)]

        return asyncio.run_coroutine_threadsafe(snapshot(), core.loop).result(timeout=5.0)

    def _running_core(self) -> Core:
        if self._core is None:
            raise RuntimeError("emulator not started")
        return self._core


def serve(host: str = "127.0.0.1", port: int = 8765, config: EmulatorConfig | None = None) -> None:
    """Run the emulator in the foreground until interrupted, logging to stderr."""
    config = config if config is not None else EmulatorConfig()
    tmp = Path(tempfile.mkdtemp(prefix="fal-flux-mcp-emulator-"))
    try:
        core = Core(config, tmp)

        def announce() -> None:
            # Once listening, with the port really bound (``--port 0`` picks one): what to point code at.
            bound = port
            for listening in server.servers:
                for sock in listening.sockets:
                    bound = sock.getsockname()[1]
            display = f"[{host}]" if ":" in host else host
            print(_announcement(f"http://{display}:{bound}", config), file=sys.stderr, flush=True)

        server = _Server(_uvicorn_config(core, quiet=False, host=host, port=port), core, announce)
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises the signal it stopped for; a re-raised SIGTERM would kill the process
            # before the files below are deleted, so it ends the way Ctrl+C does.
            signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl+C it handled
            server.run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _announcement(url: str, config: EmulatorConfig) -> str:
    """What a person starting the emulator needs: where it is and which key it takes."""
    key = "any key of the form id:secret" if config.accept_any_key else f"only the key {config.key}"
    example = config.key
    return (
        f"fal emulator listening on {url}; it accepts {key}.\n"
        f"  fal-flux-mcp:   FLUX_MCP_FAL_URL={url} FAL_KEY={example}\n"
        f"  your own code:  send requests to {url} instead of fal's hosts, with Authorization: Key {example}"
    )
