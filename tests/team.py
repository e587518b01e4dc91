"""A team's deployment without containers: PostgreSQL, two server processes and Debian's nginx.

It is the topology ``compose.yaml`` describes, run on this machine: the ``fal-flux-mcp`` command serving
Streamable HTTP twice, on free ports of 127.0.0.1, with the same OAuth issuer, the same
``FLUX_MCP_DATABASE_URL``, the same output folder and the same request-state keys; nginx in front, run
from ``deploy/nginx.conf`` itself (only its addresses replaced) with a temporary prefix as an ordinary
process. ``running_team`` stops everything it started, whatever happens in between; the fal emulator,
the issuer and the database are the caller's (the test's fixtures, or the benchmark's own).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psycopg
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.issuer import ISSUER, Issuer, running_issuer

REPO = Path(__file__).resolve().parent.parent
NGINX_CONF = REPO / "deploy" / "nginx.conf"
#: The addresses ``deploy/nginx.conf`` names in its compose form, replaced here by free local ports.
COMPOSE_REPLICAS = ("replica-1:8000", "replica-2:8000")
COMPOSE_LISTEN = "listen 8080;"
#: Upper bound on any one process's start; a healthy start takes about a second.
START_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], Any], what: str, timeout: float = 20.0, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(every)


def _nginx() -> str:
    found = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/sbin/nginx") if Path(path).exists()), None
    )
    if found is None:
        raise RuntimeError(
            "nginx is missing: install Debian's nginx package (apt-get install nginx; .ci/run does it)"
        )
    return found


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (an orderly stop for the server, a fast one for nginx), SIGKILL if that takes over 10 s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@dataclass
class Replica:
    """One ``fal-flux-mcp serve --transport streamable-http`` process."""

    name: str
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upstream(self) -> str:
        """How nginx's access log names this replica."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "fal_flux_mcp", "serve", "--transport", "streamable-http"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "FLUX_MCP_"))}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=inherited | self.env, cwd=REPO
            )

    def wait_ready(self) -> None:
        metadata = f"{self.origin}/.well-known/oauth-protected-resource/mcp"

        def ready() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited at start:\n{self.log.read_text()}")
            return _answers(metadata)

        wait_until(ready, f"replica {self.name} answering on {self.origin}", START_SECONDS)

    def kill(self) -> None:
        """SIGKILL: the replica dies mid-whatever, as on a crash or an OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        stop(self.process)


@dataclass
class Nginx:
    """Debian's nginx as a foreground process on a temporary prefix: ``deploy/nginx.conf`` on free ports."""

    port: int
    upstreams: list[str]
    prefix: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def start(self) -> None:
        site = NGINX_CONF.read_text()
        for compose, local in zip(COMPOSE_REPLICAS, self.upstreams, strict=True):
            assert compose in site, f"{NGINX_CONF} no longer names {compose}"
            site = site.replace(compose, local)
        assert COMPOSE_LISTEN in site, f"{NGINX_CONF} no longer says {COMPOSE_LISTEN}"
        site = site.replace(COMPOSE_LISTEN, f"listen 127.0.0.1:{self.port};")
        (self.prefix / "fal-flux-mcp.conf").write_text(site)
        # What the nginx image's own nginx.conf gives conf.d, with every path in the prefix; the access log
        # also names the replica that answered.
        (self.prefix / "nginx.conf").write_text(
            f"""worker_processes 1;
error_log {self.prefix}/error.log warn;
pid {self.prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    log_format team '$msec $upstream_addr $status $request_method $request_uri';
    access_log {self.prefix}/access.log team;
    client_body_temp_path {self.prefix}/body;
    proxy_temp_path {self.prefix}/proxy;
    fastcgi_temp_path {self.prefix}/fastcgi;
    uwsgi_temp_path {self.prefix}/uwsgi;
    scgi_temp_path {self.prefix}/scgi;
    include {self.prefix}/fal-flux-mcp.conf;
}}
"""
        )
        self.prefix.chmod(0o755)  # as root, nginx's workers run as nobody and write their temp files here
        command = [_nginx(), "-p", f"{self.prefix}/", "-c", str(self.prefix / "nginx.conf")]
        command += ["-e", str(self.prefix / "error.log"), "-g", "daemon off;"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nginx exited at start: {stderr}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(listening, f"nginx listening on {self.port}", START_SECONDS)

    def answered_by(self) -> Counter[str]:
        """How many requests each replica answered (by its address), from the access log."""
        counts: Counter[str] = Counter()
        if self.access_log.exists():
            for line in self.access_log.read_text().splitlines():
                fields = line.split()
                if len(fields) > 1:
                    counts[fields[1].rstrip(",")] += 1
        return counts

    def stop(self) -> None:
        stop(self.process)  # nginx's fast shutdown: open event streams are cut


@dataclass
class Team:
    """The running topology: what a test talks to and what it may kill."""

    issuer: Issuer
    database_url: str
    output_dir: Path
    nginx: Nginx
    replicas: list[Replica]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """nginx: where the team's users connect."""
        return f"http://127.0.0.1:{self.nginx.port}"

    @property
    def audience(self) -> str:
        return f"{self.origin}/mcp"

    def token(self, user: str, **claims: Any) -> str:
        return self.issuer.token(user, **{"aud": self.audience, **claims})

    @asynccontextmanager
    async def client(
        self, user: str, *, origin: str | None = None, http: httpx2.AsyncClient | None = None, **options: Any
    ) -> AsyncIterator[Client]:
        """A real MCP client for ``user`` (a bearer JWT), through nginx unless ``origin`` names a replica."""
        http = http or httpx2.AsyncClient()
        http.headers["Authorization"] = f"Bearer {self.token(user)}"
        async with (
            http,
            Client(
                streamable_http_client(f"{origin or self.origin}/mcp", http_client=http), **options
            ) as client,
        ):
            yield client

    def job_row(self, job_id: str) -> dict[str, Any] | None:
        """The job's row in the shared journal, straight from PostgreSQL."""
        with psycopg.connect(self.database_url) as connection:
            cursor = connection.execute("SELECT * FROM jobs WHERE job_id = %s", (job_id,))
            row = cursor.fetchone()
            names = [column.name for column in cursor.description or ()]
        return dict(zip(names, row, strict=True)) if row is not None else None

    def count_rows(self, table: str, job_id: str) -> int:
        """How many rows of ``table`` (jobs, intents) name ``job_id``."""
        column = "job_id" if table == "jobs" else "intent_id"
        with psycopg.connect(self.database_url) as connection:
            row = connection.execute(
                f"SELECT count(*) FROM {table} WHERE {column} = %s", (job_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    def saved_files(self) -> list[Path]:
        return sorted(path for path in self.output_dir.rglob("*") if path.is_file())


#: What only the tests set: the emulator for fal, quick retries and takeovers, more logging.
TEST_ONLY = {
    "FLUX_MCP_FAL_URL",
    "FLUX_MCP_LOG_LEVEL",
    "FLUX_MCP_WAIT_SECONDS",
    "FLUX_MCP_RETRY_ATTEMPTS",
    "FLUX_MCP_RETRY_BASE_DELAY",
    "FLUX_MCP_RETRY_MAX_DELAY",
    "FLUX_MCP_LEASE_SECONDS",
}


def replica_env(
    emulator_url: str,
    fal_key: str,
    issuer: Issuer,
    audience: str,
    database_url: str,
    output_dir: Path,
    keys: str | None,
) -> dict[str, str]:
    """What every replica shares (compose.yaml's ``x-replica`` environment, on this machine)."""
    env = {
        "FAL_KEY": fal_key,
        "FLUX_MCP_FAL_URL": emulator_url,
        "FLUX_MCP_DATABASE_URL": database_url,
        "FLUX_MCP_OUTPUT_DIR": str(output_dir),
        "FLUX_MCP_OAUTH_ISSUER": ISSUER,
        "FLUX_MCP_OAUTH_AUDIENCE": audience,
        "FLUX_MCP_OAUTH_JWKS_URL": issuer.url,
        "FLUX_MCP_LOG_LEVEL": "INFO",
        "FLUX_MCP_WAIT_SECONDS": "10",
        "FLUX_MCP_RETRY_ATTEMPTS": "3",
        "FLUX_MCP_RETRY_BASE_DELAY": "0.01",
        "FLUX_MCP_RETRY_MAX_DELAY": "0.05",
        # A killed replica's jobs are taken over this long after its last renewal (10 s by default).
        "FLUX_MCP_LEASE_SECONDS": "2",
    }
    if keys is not None:
        env["FLUX_MCP_REQUEST_STATE_KEYS"] = keys
    return env


def shared_keys() -> str:
    """Two fresh request-state secrets, as an operator makes them (the first seals, both unseal)."""
    return f"{secrets.token_hex(32)},{secrets.token_hex(32)}"


@contextmanager
def running_team(
    *,
    emulator_url: str,
    fal_key: str,
    issuer: Issuer,
    database_url: str,
    folder: Path | None = None,
    keys: str | None = "shared",
    env: dict[str, str] | None = None,
) -> Iterator[Team]:
    """PostgreSQL's ``database_url``, two replicas and nginx, all stopped at the end.

    ``keys``: "shared" (the default) gives both replicas the same fresh request-state keys; None gives
    them none (each its own, as a misconfigured fleet has); anything else is the keys themselves.
    ``env`` is added to every replica's environment (budgets, say).
    """
    with ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flux-mcp-team-")))
        output_dir = folder / "shared-output"
        output_dir.mkdir(parents=True, exist_ok=True)
        nginx_port = free_port()
        audience = f"http://127.0.0.1:{nginx_port}/mcp"
        common = replica_env(
            emulator_url,
            fal_key,
            issuer,
            audience,
            database_url,
            output_dir,
            shared_keys() if keys == "shared" else keys,
        ) | (env or {})
        replicas = []
        for number in (1, 2):
            replica = Replica(
                f"replica-{number}",
                free_port(),
                common
                | {
                    "FLUX_MCP_STATE_DIR": str(folder / f"state-{number}"),
                    "FLUX_MCP_REPLICA_ID": f"replica-{number}",
                },
                folder / f"replica-{number}.log",
            )
            stack.callback(replica.stop)
            replica.start()
            replicas.append(replica)
        for replica in replicas:
            replica.wait_ready()
        prefix = folder / "nginx"
        prefix.mkdir(exist_ok=True)
        nginx = Nginx(nginx_port, [replica.upstream for replica in replicas], prefix)
        stack.callback(nginx.stop)
        nginx.start()
        yield Team(issuer, database_url, output_dir, nginx, replicas, common)


def team_starter(emulator_url: str, fal_key: str, database_url: str, folder: Path) -> Callable[..., Any]:
    """``running_team`` on this emulator, database and folder, with an issuer of its own; it takes
    ``running_team``'s other options (``keys``, ``env``)."""

    @contextmanager
    def start(**options: Any) -> Iterator[Team]:
        with (
            running_issuer() as issuer,
            running_team(
                emulator_url=emulator_url,
                fal_key=fal_key,
                issuer=issuer,
                database_url=database_url,
                folder=folder,
                **options,
            ) as team,
        ):
            yield team

    return start
