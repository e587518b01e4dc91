"""Each user's own fal key (``FLUX_MCP_USER_KEYS=on``): sealed at rest, one fal client per user.

A user's key reaches the server only through the key page (``_key_page``), never through the chat.
It is stored sealed with AES-256-GCM under a key derived (HKDF) from ``FLUX_MCP_USER_KEYS_SECRET``,
with the owner as associated data: a sealed key copied onto another user's row does not open. It is
opened only to build that user's fal client, which shares the process's connection pools.

The server's own key is never a fallback: under ``USER_KEYS=on`` the process's client carries no key
(``FalClient.from_settings``), so a user without a key of their own cannot spend the server's credit.

The links to the key page carry a ticket: the user's subject and an expiry, MAC'd with another key
derived from the same secret, so any replica can check it and no one can make one for someone else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from fal_flux_mcp.fal._keys import key_problem
from fal_flux_mcp.server._errors import JobError
from fal_flux_mcp.server._journal import Journal
from fal_flux_mcp.settings import Settings

if TYPE_CHECKING:
    from fal_flux_mcp.fal import FalClient

logger = logging.getLogger("fal_flux_mcp.server")

#: How long a link to the key page works.
TICKET_SECONDS = 600
#: The tools that send the user's key to fal; the others (list_models, get_spend, the gallery) do not.
NEEDS_KEY = frozenset(
    {"generate_image", "edit_image", "submit_job", "check_status", "cancel_job", "upload_file"}
)
#: The path of the key page, beside ``/mcp``.
KEY_PAGE_PATH = "/keys"
_SEALED_PREFIX = "v1."


class NoUserKey(JobError):
    """The user has no fal key stored (or one that no longer opens) on a server with ``USER_KEYS=on``."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(secret: bytes, purpose: bytes) -> bytes:
    """A 32-byte key for one purpose: sealing and tickets never share a key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


class Sealer:
    """Seals fal keys to their owner, and makes and checks the key page's tickets."""

    def __init__(self, secret: str) -> None:
        # Loaded here, not at import: a server without users' keys never needs it.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        raw = secret.encode()
        self._aead = AESGCM(_derive(raw, b"fal-flux-mcp user fal key sealing v1"))
        self._mac_key = _derive(raw, b"fal-flux-mcp key page tickets v1")

    def seal(self, owner: str, key: str) -> str:
        nonce = os.urandom(12)
        return _SEALED_PREFIX + _b64(nonce + self._aead.encrypt(nonce, key.encode(), _aad(owner)))

    def open(self, owner: str, sealed: str) -> str | None:
        """The key, or None if it was sealed for someone else or under another secret."""
        from cryptography.exceptions import InvalidTag

        try:
            raw = _unb64(sealed.removeprefix(_SEALED_PREFIX))
            return self._aead.decrypt(raw[:12], raw[12:], _aad(owner)).decode()
        except (InvalidTag, ValueError):
            return None

    def ticket(self, owner: str, *, now: float | None = None) -> str:
        """A link ticket for ``owner``, good for ``TICKET_SECONDS``."""
        expires = int((time.time() if now is None else now) + TICKET_SECONDS)
        body = _b64(json.dumps({"sub": owner, "exp": expires, "n": secrets.token_urlsafe(9)}).encode())
        return f"{body}.{self._mac(body)}"

    def ticket_owner(self, ticket: str, *, now: float | None = None) -> str | None:
        """Whose ticket this is, or None if it is forged, damaged or expired."""
        body, _, mac = ticket.strip().partition(".")
        if not body or not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None
        try:
            claims = json.loads(_unb64(body))
            owner, expires = claims["sub"], claims["exp"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(owner, str) or not isinstance(expires, int):
            return None
        return owner if (time.time() if now is None else now) < expires else None

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._mac_key, body.encode(), hashlib.sha256).digest())


def _aad(owner: str) -> bytes:
    return b"fal-flux-mcp owner:" + owner.encode()


class UserKeys:
    """The users' sealed keys in the journal, and a fal client per user built from them."""

    def __init__(self, settings: Settings, journal: Journal, base: Callable[[], FalClient]) -> None:
        assert settings.user_keys_secret is not None
        self.sealer = Sealer(settings.user_keys_secret.get_secret_value())
        self.journal = journal
        self._base = base
        #: Per owner: the sealed text the client was built from, and the client.
        self._clients: dict[str, tuple[str, FalClient]] = {}
        self._stored: dict[str, anyio.Event] = {}

    def has_key(self, owner: str) -> bool:
        sealed = self.journal.sealed_key(owner)
        return sealed is not None and self.sealer.open(owner, sealed) is not None

    def client(self, owner: str) -> FalClient:
        """``owner``'s fal client; ``NoUserKey`` if they have no key here.

        Read from the journal every time, so that a key replaced on any replica is used at once;
        the client is rebuilt only when the stored key changed.
        """
        sealed = self.journal.sealed_key(owner)
        cached = self._clients.get(owner)
        if sealed is not None and cached is not None and cached[0] == sealed:
            return cached[1]
        key = self.sealer.open(owner, sealed) if sealed is not None else None
        if key is None:
            self._clients.pop(owner, None)
            if sealed is not None:
                logger.warning(
                    "the stored fal key of a user does not open (FLUX_MCP_USER_KEYS_SECRET changed?); "
                    "they must enter it again"
                )
            raise NoUserKey(
                "This server uses each user's own fal key, and you have none stored here: call the tool "
                "again to be sent to the page where you enter it."
            )
        client = self._base().with_key(key)
        self._clients[owner] = (sealed, client)  # type: ignore[assignment]  # sealed is set when key is
        return client

    def store(self, owner: str, key: str) -> str | None:
        """Seal and store ``owner``'s key; why it cannot be a fal key instead (nothing stored)."""
        key = key.strip()
        problem = key_problem(key)
        if problem is not None:
            return f"That {problem}. Copy the whole key from fal.ai/dashboard/keys."
        self.journal.store_sealed_key(owner, self.sealer.seal(owner, key))
        self._stored.pop(owner, anyio.Event()).set()
        logger.info("stored a fal key for a user")
        return None

    def delete(self, owner: str) -> bool:
        self._clients.pop(owner, None)
        return self.journal.delete_sealed_key(owner)

    async def wait_for_key(self, owner: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``owner`` to store a key (on this replica's page or another's)."""
        with anyio.move_on_after(seconds):
            while not self.has_key(owner):
                event = self._stored.setdefault(owner, anyio.Event())
                # Another replica's page wakes no event here: look at the journal again each second.
                with anyio.move_on_after(1.0):
                    await event.wait()
            return True
        return self.has_key(owner)
