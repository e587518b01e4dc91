"""Webhook delivery as fal does it: a JSON POST when a job finishes, retried, signed with Ed25519.

The signature covers ``request_id``, ``user_id``, ``timestamp`` and the SHA-256 of the raw body,
one per line; receivers verify it with the public key served as a JWKS. The signing key is made
per emulator, so it proves nothing beyond "this came from that emulator".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from typing import Any

import httpx

try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
except ImportError:  # pragma: no cover - cryptography ships with mcp's dependencies
    Ed25519PrivateKey = None  # type: ignore[assignment,misc]

log = logging.getLogger("fal_flux_mcp.emulator")


class WebhookSigner:
    """An Ed25519 key pair for webhook signatures; inert when ``cryptography`` is missing."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate() if Ed25519PrivateKey is not None else None
        if self._key is not None:
            raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            self.public_x: str | None = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            self.kid = hashlib.sha256(raw).hexdigest()[:16]
        else:
            self.public_x = None
            self.kid = ""

    @property
    def available(self) -> bool:
        """Whether signatures can be made."""
        return self._key is not None

    def jwks(self) -> dict[str, Any]:
        """The public key as fal publishes its webhook keys (OKP / Ed25519 JWK set)."""
        if self.public_x is None:
            return {"keys": []}
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": self.public_x,
                    "kid": self.kid,
                    "use": "sig",
                    "alg": "EdDSA",
                }
            ]
        }

    def headers(self, request_id: str, user_id: str, body: bytes) -> dict[str, str]:
        """fal's four signature headers for ``body``."""
        if self._key is None:
            return {}
        timestamp = str(int(time.time()))
        message = "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode()
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": self._key.sign(message).hex(),
        }


def webhook_body(request_id: str, status_code: int, payload: Any) -> dict[str, Any]:
    """fal's webhook payload for a finished job whose result call would answer ``status_code``."""
    ok = status_code == 200
    return {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK" if ok else "ERROR",
        "payload": payload,
        "error": None if ok else f"Invalid status code: {status_code}",
    }


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    *,
    signer: WebhookSigner | None,
    user_id: str,
    attempts: int,
    retry_seconds: float,
    timeout: float,
) -> bool:
    """POST ``body`` to ``url`` until a 2xx, at most ``attempts`` times; whether it got through."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    delay = retry_seconds
    for attempt in range(1, attempts + 1):
        headers = {"Content-Type": "application/json", "User-Agent": "fal-emulator-webhook"}
        if signer is not None:
            headers.update(signer.headers(body["request_id"], user_id, raw))
        try:
            response = await client.post(url, content=raw, headers=headers, timeout=timeout)
            if response.is_success:
                return True
            log.info("webhook %s answered %s (attempt %d/%d)", url, response.status_code, attempt, attempts)
        except httpx.HTTPError as exc:
            log.info("webhook %s failed: %r (attempt %d/%d)", url, exc, attempt, attempts)
        if attempt < attempts:
            await asyncio.sleep(delay)
            delay *= 2
    return False
