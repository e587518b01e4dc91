"""A receiver for fal webhooks (``submit_job(webhook_url=...)``) that checks fal's Ed25519 signature.

What it shows:

* the body fal POSTs when a job finishes, ``{request_id, gateway_request_id, status: "OK"|"ERROR",
  payload, error}``, and how to read the image URLs out of ``payload``;
* verifying a delivery as fal documents it: the message is ``request_id + "\\n" + user_id + "\\n" +
  timestamp + "\\n" + hex(sha256(raw body))``, signed with Ed25519; the signature is the hex
  ``X-Fal-Webhook-Signature`` header, the other three come from ``X-Fal-Webhook-Request-Id``,
  ``-User-Id`` and ``-Timestamp``; the public keys are the OKP/Ed25519 entries of a JWKS (fetched and
  cached for a day, fetched again once if no cached key matches); timestamps more than 300 s from
  now are rejected. It uses ``cryptography`` (installed with mcp's ``pyjwt[crypto]``);
* answering fast and idempotently: fal retries a delivery that fails, so a request id already seen is
  acknowledged again but not processed twice. Unverifiable deliveries get a 401.

Run it offline against the fal emulator, in three terminals (from the repository root, in the
project's virtualenv)::

    fal-flux-mcp emulator --port 8765
    python examples/webhook_receiver.py --port 8000 --jwks-url http://127.0.0.1:8765/.well-known/jwks.json
    python examples/stdio_client.py --fal-url http://127.0.0.1:8765 --webhook-url http://127.0.0.1:8000/fal/webhook

(or trigger a delivery without MCP: ``curl -X POST -H "Authorization: Key emulator-key-id:emulator-key-secret"
-H "Content-Type: application/json" -d '{"prompt": "a red fox"}'
"http://127.0.0.1:8765/fal-ai/flux/schnell?fal_webhook=http://127.0.0.1:8000/fal/webhook"``).

For real fal, run it without ``--jwks-url`` (fal's keys at https://rest.alpha.fal.ai/.well-known/jwks.json)
on a public https address, and pass that address as ``webhook_url``. ``--port 0`` picks a free port;
the address it listens on is printed first.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
TOLERANCE_SECONDS = 300
JWKS_TTL_SECONDS = 24 * 3600
JWKS_REFRESH_MIN_SECONDS = 60  # at most one refetch a minute when no cached key matches


class InvalidWebhook(Exception):
    """A delivery that must not be trusted; the message says why."""


class SignatureMismatch(InvalidWebhook):
    """Well-formed and fresh, but no known key verifies the signature (perhaps the keys rotated)."""


class KeysUnavailable(Exception):
    """The JWKS could not be fetched or read."""


def public_keys(jwks: Mapping[str, Any]) -> list[Ed25519PublicKey]:
    """The Ed25519 public keys of a JWKS (``kty: OKP``, ``crv: Ed25519``, raw key in ``x``, base64url)."""
    keys = []
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and isinstance(jwk.get("x"), str):
            try:
                raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
                keys.append(Ed25519PublicKey.from_public_bytes(raw))
            except (ValueError, binascii.Error):
                continue  # not a usable key: skip it, as a JWKS consumer should
    return keys


def verify_webhook(
    headers: Mapping[str, str], body: bytes, keys: list[Ed25519PublicKey], *, now: float | None = None
) -> str:
    """Check a delivery's signature and freshness; returns its request id or raises ``InvalidWebhook``.

    ``headers`` is looked up by the exact header names below, so pass a case-insensitive mapping
    (Starlette's and httpx's headers are).
    """
    try:
        request_id = headers["X-Fal-Webhook-Request-Id"]
        user_id = headers["X-Fal-Webhook-User-Id"]
        timestamp = headers["X-Fal-Webhook-Timestamp"]
        signature_hex = headers["X-Fal-Webhook-Signature"]
    except KeyError as missing:
        raise InvalidWebhook(f"missing header {missing.args[0]}") from None
    try:
        sent_at = int(timestamp)
        signature = bytes.fromhex(signature_hex)
    except (ValueError, binascii.Error):
        raise InvalidWebhook("malformed timestamp or signature header") from None
    now = time.time() if now is None else now
    if abs(now - sent_at) > TOLERANCE_SECONDS:
        raise InvalidWebhook(
            f"timestamp {sent_at} is {now - sent_at:+.0f}s from now (limit ±{TOLERANCE_SECONDS}s)"
        )
    message = "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode()
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return request_id
    raise SignatureMismatch("signature does not match the body and headers under any known key")


@dataclass
class KeyCache:
    """The JWKS's keys, fetched on first use, kept for a day, fetched again early when none matches."""

    url: str
    keys: list[Ed25519PublicKey] = field(default_factory=list)
    fetched_at: float = float("-inf")
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def get(self, *, refresh: bool = False) -> list[Ed25519PublicKey]:
        async with self.lock:
            age = time.monotonic() - self.fetched_at
            if age > JWKS_TTL_SECONDS or (refresh and age > JWKS_REFRESH_MIN_SECONDS):
                try:
                    async with httpx.AsyncClient(timeout=10) as client:
                        response = await client.get(self.url)
                        response.raise_for_status()
                    self.keys = public_keys(response.json())
                except (httpx.HTTPError, ValueError, AttributeError) as exc:
                    raise KeysUnavailable(f"cannot get the webhook keys from {self.url}: {exc!r}") from exc
                self.fetched_at = time.monotonic()
            return self.keys


def image_urls(payload: Any) -> list[str]:
    """The image URLs in a FLUX result (``{"images": [{"url": ...}, ...], ...}``)."""
    images = payload.get("images") if isinstance(payload, dict) else None
    return [image["url"] for image in images or [] if isinstance(image, dict) and "url" in image]


def build_app(jwks_url: str = FAL_JWKS_URL, path: str = "/fal/webhook") -> Starlette:
    """The receiver: ``POST {path}`` verifies a delivery, prints what it carries, answers 200."""
    key_cache = KeyCache(jwks_url)
    seen: set[str] = set()  # request ids already processed (a real service would persist these)

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()  # the raw bytes: the signature covers exactly these
        try:
            try:
                request_id = verify_webhook(request.headers, body, await key_cache.get())
            except SignatureMismatch:
                # Perhaps the keys were rotated: fetch them again (rate-limited) and retry once.
                request_id = verify_webhook(request.headers, body, await key_cache.get(refresh=True))
        except InvalidWebhook as exc:
            print(f"rejected delivery: {exc}", flush=True)
            return JSONResponse({"detail": str(exc)}, status_code=401)
        except KeysUnavailable as exc:
            print(f"deferred delivery: {exc}", flush=True)
            return JSONResponse({"detail": "signing keys unavailable"}, status_code=503)  # fal retries

        try:
            delivery = json.loads(body)
        except ValueError:
            return JSONResponse({"detail": "body is not JSON"}, status_code=400)
        if request_id in seen:
            print(f"duplicate delivery for {request_id}, already processed", flush=True)
            return JSONResponse({"ok": True, "duplicate": True})
        seen.add(request_id)

        if delivery.get("status") == "OK":
            urls = image_urls(delivery.get("payload"))
            print(f"verified delivery for {request_id}: OK, {len(urls)} image(s)", flush=True)
            for url in urls:
                print(f"  image: {url}", flush=True)
        else:
            detail = delivery.get("payload_error") or delivery.get("payload")
            print(f"verified delivery for {request_id}: ERROR {delivery.get('error')}: {detail}", flush=True)
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route(path, receive, methods=["POST"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Receive and verify fal webhooks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 for a free port (default: %(default)s)")
    parser.add_argument("--path", default="/fal/webhook")
    parser.add_argument("--jwks-url", default=FAL_JWKS_URL, help="public keys (default: fal's, %(default)s)")
    args = parser.parse_args(argv)

    # Listen first, so that --port 0 can print the real address, and connections made as soon as it
    # is printed wait in the backlog until the server takes them.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"listening on http://{host}:{sock.getsockname()[1]}{args.path}", flush=True)
    print(f"verifying with the keys at {args.jwks_url}", flush=True)
    config = uvicorn.Config(build_app(args.jwks_url, args.path), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
