"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary data folder, a free port.

CI runs as root and PostgreSQL refuses to run as root, so the server runs as an unprivileged user
(``postgres`` from Debian's package, else one created here). Missing binaries are an error, never a
skip: the PostgreSQL journal must be tested wherever the suite runs.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from tests.serving import bind_free_port

_USER = "postgres"


def _binaries() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError(
            "PostgreSQL's server binaries (/usr/lib/postgresql/<version>/bin) are missing: install Debian's "
            "postgresql package (apt-get install postgresql; .ci/run does it)"
        )
    return found[-1].parent


def _unprivileged() -> dict[str, Any]:
    """subprocess arguments that drop root to an unprivileged user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _USER], check=True)
        entry = pwd.getpwnam(_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PostgresServer:
    """One PostgreSQL server for the test session; ``database()`` gives each test an empty database."""

    def __init__(self) -> None:
        self._bin = _binaries()
        self._as = _unprivileged()
        self.folder = Path(tempfile.mkdtemp(prefix="flux-mcp-pg-"))
        if self._as:
            os.chown(self.folder, self._as["user"], self._as["group"])
        self._data = self.folder / "data"
        self._names = itertools.count(1)
        sock = bind_free_port()
        self.port = sock.getsockname()[1]
        sock.close()
        self._started = False

    def _run(self, *command: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.folder, **self._as)
        if done.returncode != 0:
            log = self.folder / "log"
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}"
                + (f"\nserver log:\n{log.read_text()}" if log.exists() else "")
            )

    def start(self) -> None:
        self._run(
            str(self._bin / "initdb"), "-D", str(self._data), "-U", "flux", "--auth=trust", "-E", "UTF8"
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
            # A test server: speed over durability.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._started = True
        self._run(
            str(self._bin / "pg_ctl"),
            "start",
            "-w",
            "-D",
            str(self._data),
            "-l",
            str(self.folder / "log"),
            "-o",
            options,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://flux@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; its URL."""
        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            if self._started:
                self._run(str(self._bin / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(self._data))
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
