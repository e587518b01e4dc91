"""Where each fal request goes: the hosts, the queue URLs, and which URLs may carry the key.

All URL building lives here. With ``FLUX_MCP_FAL_URL`` set, one origin stands in for every fal host
with the same paths as on the real hosts (``queue.fal.run``, ``fal.run``, ``rest.alpha.fal.ai``); the one
exception is the synchronous run, which shares its paths with the queue and so is served under
``/run`` on that origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from fal_flux_mcp.fal._exceptions import ForeignURLError

_NAMESPACES = frozenset({"workflows", "comfy"})

#: Hosts that may receive the key. The CDN is not among them: files there are fetched without it.
_FAL_KEY_HOSTS = frozenset(
    {
        "queue.fal.run",
        "fal.run",
        "rest.fal.ai",
        "rest.alpha.fal.ai",
        "api.fal.ai",
        "queue.falrun.com",
        "falrun.com",
    }
)
_FAL_HOST_SUFFIXES = (".fal.run", ".fal.ai", ".fal.media")


@dataclass(frozen=True, slots=True)
class EndpointId:
    """A parsed endpoint id, ``[namespace/]owner/alias[/path]``."""

    owner: str
    alias: str
    path: str = ""
    namespace: str = ""

    @classmethod
    def parse(cls, endpoint_id: str) -> EndpointId:
        """Split an endpoint id the way fal's clients do; a malformed id is a ``ValueError``."""
        parts = [p for p in endpoint_id.strip("/").split("/") if p]
        namespace = ""
        if parts and parts[0] in _NAMESPACES:
            namespace, parts = parts[0], parts[1:]
        if len(parts) < 2:
            raise ValueError(f"invalid fal endpoint id {endpoint_id!r}: expected 'owner/alias[/path]'")
        return cls(owner=parts[0], alias=parts[1], path="/".join(parts[2:]), namespace=namespace)

    @property
    def app(self) -> str:
        """``[namespace/]owner/alias``: the part of the id that status and result URLs are built on."""
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{self.owner}/{self.alias}"

    def __str__(self) -> str:
        return f"{self.app}/{self.path}" if self.path else self.app


@dataclass(frozen=True, slots=True)
class QueueURLs:
    """The three follow-up URLs of a queued request."""

    status_url: str
    response_url: str
    cancel_url: str


class FalHosts:
    """The base URLs of fal's services, real or replaced by one local origin."""

    def __init__(self, override: str | None = None) -> None:
        if override:
            origin = override.rstrip("/")
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"FLUX_MCP_FAL_URL must be an http(s) origin, got {override!r}")
            self.queue = origin
            self.run = f"{origin}/run"
            self.rest = origin
            self.platform = f"{origin}/v1"
            self.cdn = origin
            self._key_origins = frozenset({_origin(origin)})
        else:
            self.queue = "https://queue.fal.run"
            self.run = "https://fal.run"
            self.rest = "https://rest.fal.ai"
            self.platform = "https://api.fal.ai/v1"
            self.cdn = "https://v3.fal.media"
            self._key_origins = frozenset()
        self.overridden = bool(override)

    def submit_url(self, endpoint: EndpointId) -> str:
        """Where a job for ``endpoint`` is queued: the full id, sub-path included."""
        return f"{self.queue}/{endpoint}"

    def queue_urls(self, endpoint: EndpointId, request_id: str, *, full_path: bool = False) -> QueueURLs:
        """Rebuild the follow-up URLs from a request id, as fal's clients do after a restart.

        fal answers on ``owner/alias`` URLs (the sub-path dropped); ``full_path=True`` gives the form
        under the whole endpoint id, which some apps route instead and which is the fallback.
        """
        base_id = str(endpoint) if full_path else endpoint.app
        base = f"{self.queue}/{base_id}/requests/{request_id}"
        return QueueURLs(status_url=f"{base}/status", response_url=base, cancel_url=f"{base}/cancel")

    def stream_url(self, status_url: str) -> str:
        """The SSE status stream that belongs to a status URL."""
        return f"{without_query(status_url).rstrip('/')}/stream"

    def storage_token_url(self) -> str:
        return f"{self.rest}/storage/auth/token?storage_type=fal-cdn-v3"

    def upload_initiate_url(self, storage_type: str = "gcs") -> str:
        return f"{self.rest}/storage/upload/initiate?storage_type={storage_type}"

    def request_history_url(self) -> str:
        """fal's platform API listing an account's requests to one endpoint (``/models/requests/by-endpoint``)."""
        return f"{self.platform}/models/requests/by-endpoint"

    def pricing_url(self) -> str:
        """fal's platform API giving the account's unit price of endpoints (``/models/pricing``)."""
        return f"{self.platform}/models/pricing"

    def may_carry_key(self, url: str) -> bool:
        """Whether ``url`` is a fal host (or the configured local origin) that may see the key."""
        parts = urlsplit(url)
        if self.overridden:
            return _origin(url) in self._key_origins
        return parts.scheme == "https" and (parts.hostname or "") in _FAL_KEY_HOSTS

    def check_key_url(self, url: str) -> str:
        """``url`` unchanged if the key may go there; ``ForeignURLError`` otherwise."""
        if not self.may_carry_key(url):
            raise ForeignURLError(
                f"refusing to send the fal key to {_origin(url) or url!r}: not a fal host"
                + (" nor the FLUX_MCP_FAL_URL origin" if self.overridden else "")
            )
        return url

    def is_fal_file_host(self, url: str) -> bool:
        """Whether ``url`` is on fal's storage (or the local origin): used to trust uploaded-file URLs."""
        parts = urlsplit(url)
        if self.overridden:
            return _origin(url) in self._key_origins
        host = parts.hostname or ""
        return parts.scheme == "https" and (host in _FAL_KEY_HOSTS or host.endswith(_FAL_HOST_SUFFIXES))


def without_query(url: str) -> str:
    """``url`` fit for a log line or an error message: a signed URL carries its credential in the query."""
    return url.split("?", 1)[0]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return ""
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"
