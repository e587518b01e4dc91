"""A test OAuth issuer: its signing keys, the JWKS it serves on a free port, and the tokens it signs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.serving import serve_handler

ISSUER = "https://issuer.example.test"


@dataclass
class Issuer:
    """A test authorization server: its signing keys, the JWKS it publishes, and how often it was fetched."""

    url: str = ""
    published: list[dict[str, Any]] = field(default_factory=list)
    keys: dict[str, Any] = field(default_factory=dict)
    fetches: int = 0

    def add_key(self, kid: str, kind: str = "RSA") -> None:
        if kind == "RSA":
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
        else:
            private = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        self.keys[kid] = private
        self.published.append({**jwk, "kid": kid, "use": "sig"})

    def token(
        self, subject: str = "alice", *, kid: str = "k1", alg: str = "RS256", key: Any = None, **claims: Any
    ) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": claims.pop("aud"), "sub": subject, "iat": now, "exp": now + 300}
        body.update(claims)
        return jwt.encode(
            body, key if key is not None else self.keys[kid], algorithm=alg, headers={"kid": kid}
        )


@contextmanager
def running_issuer() -> Iterator[Issuer]:
    issuer = Issuer()
    issuer.add_key("k1")

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            issuer.fetches += 1
            body = json.dumps({"keys": issuer.published}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serve_handler(Jwks) as origin:
        issuer.url = f"{origin}/jwks.json"
        yield issuer
