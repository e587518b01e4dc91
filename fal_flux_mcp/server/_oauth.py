"""The HTTP transports as an OAuth 2.1 resource server: JWTs from one issuer, checked against its JWKS.

The SDK does the HTTP part (401 with ``WWW-Authenticate``, the RFC 9728 protected resource metadata
route, the verified token in ``get_access_token()``); this module says which tokens are good. A token
is accepted only when it is signed with an asymmetric algorithm by a key the issuer publishes, names
this server in ``aud`` and the issuer in ``iss``, has a subject, and is within ``exp``/``nbf`` (a
little leeway for clocks that drift). Anything else, including an issuer that cannot be reached, is a
refusal: the SDK answers 401, and the log says why without the token, which is a credential.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import jwt
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings

from fal_flux_mcp.settings import Settings

logger = logging.getLogger("fal_flux_mcp.server.oauth")

#: Signatures only the issuer's private key can make. ``none`` and the HMAC family (HS*) are refused:
#: with HS* the "public" key would be a shared secret, and a JWKS is public.
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
#: Seconds of clock difference forgiven on ``exp``, ``nbf`` and ``iat``.
LEEWAY_SECONDS = 30.0
#: How long fetched keys are used before they are fetched again, so that a rotated-out key stops working.
JWKS_MAX_AGE_SECONDS = 3600.0
#: At most one fetch this often for an unknown ``kid``, so that forged tokens cannot make the server
#: hammer the issuer, while a real key rotation is picked up at once.
JWKS_REFRESH_INTERVAL_SECONDS = 10.0
#: Time allowed for fetching the JWKS: a slow issuer delays a request by this much, not for ever.
JWKS_TIMEOUT_SECONDS = 5.0


class JwksCache:
    """The issuer's public keys by ``kid``, fetched with httpx, kept for a while, refreshed on a new ``kid``."""

    def __init__(self, url: str, *, timeout: float = JWKS_TIMEOUT_SECONDS) -> None:
        self.url = url
        self._timeout = timeout
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._refreshed_for_unknown_at: float | None = None
        self._lock = anyio.Lock()

    async def key(self, kid: str | None) -> dict[str, Any] | None:
        """The JWK for ``kid`` (a token without one: the only key, if there is one), or None."""
        async with self._lock:
            now = time.monotonic()
            if self._fetched_at is None or now - self._fetched_at > JWKS_MAX_AGE_SECONDS:
                await self._fetch()
            elif self._find(kid) is None and (
                self._refreshed_for_unknown_at is None
                or now - self._refreshed_for_unknown_at > JWKS_REFRESH_INTERVAL_SECONDS
            ):
                # The issuer may have rotated its keys: look once, then not again for a while.
                self._refreshed_for_unknown_at = now
                await self._fetch()
            return self._find(kid)

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _fetch(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as http:
                answer = await http.get(self.url, headers={"Accept": "application/json"})
                answer.raise_for_status()
                listed = answer.json().get("keys")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            # Keys fetched before are kept: an issuer that is briefly down does not log everyone out.
            logger.warning("could not fetch the OAuth issuer's keys from %s: %s", self.url, exc)
            return
        if not isinstance(listed, list):
            logger.warning("the OAuth JWKS at %s has no 'keys' list", self.url)
            return
        keys: dict[str, dict[str, Any]] = {}
        for index, jwk in enumerate(listed):
            if isinstance(jwk, dict) and jwk.get("use", "sig") == "sig":
                keys[str(jwk.get("kid", f"#{index}"))] = jwk
        self._keys = keys
        self._fetched_at = time.monotonic()


class JwtVerifier:
    """The SDK's ``TokenVerifier`` for JWT access tokens from ``settings.oauth_issuer``."""

    def __init__(self, settings: Settings, *, jwks: JwksCache | None = None) -> None:
        assert settings.oauth_issuer and settings.oauth_audience and settings.oauth_jwks_url
        self.issuer = settings.oauth_issuer
        self.audience = settings.oauth_audience
        self.jwks = jwks or JwksCache(settings.oauth_jwks_url)

    async def verify_token(self, token: str) -> AccessToken | None:
        """The verified token, or None (the SDK then answers 401); never raises, never logs the token."""
        try:
            claims = await self._claims(token)
        except jwt.PyJWTError as exc:
            logger.info("refused an access token: %s", exc)
            return None
        except Exception:  # a refusal either way; a 500 with a traceback helps no one
            logger.exception("refused an access token: verifying it failed unexpectedly")
            return None
        subject = claims["sub"]
        scopes = claims.get("scope") or claims.get("scp") or []
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id") or claims.get("azp") or subject),
            scopes=scopes.split() if isinstance(scopes, str) else [str(scope) for scope in scopes],
            # The SDK compares this with its own clock again, without leeway: give it the same leeway.
            expires_at=int(claims["exp"] + LEEWAY_SECONDS),
            resource=self.audience,
            subject=subject,
            claims=claims,
        )

    async def _claims(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise jwt.InvalidAlgorithmError(f"the algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        jwk = await self.jwks.key(str(kid) if kid is not None else None)
        if jwk is None:
            raise jwt.InvalidKeyError(f"the issuer publishes no key {kid!r}")
        if jwk.get("alg", algorithm) != algorithm:
            raise jwt.InvalidAlgorithmError(f"key {kid!r} is for {jwk.get('alg')!r}, not {algorithm!r}")
        try:
            key = jwt.PyJWK(jwk, algorithm=algorithm)
        except jwt.PyJWKError as exc:  # e.g. an EC key named by an RS256 token
            raise jwt.InvalidKeyError(f"key {kid!r} does not fit {algorithm}: {exc}") from None
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[algorithm],
            audience=self.audience,
            issuer=self.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise jwt.InvalidTokenError("the token's subject is not a text")
        return claims


def resource_url(settings: Settings, origin: str, path: str) -> str:
    """This server's resource identifier, advertised in the protected resource metadata.

    The audience when it is an http(s) URL (what MCP clients ask the issuer for, RFC 8707); otherwise
    the address the endpoint is served at.
    """
    audience = settings.oauth_audience or ""
    if urlsplit(audience).scheme in ("http", "https"):
        return audience
    return origin.rstrip("/") + path


def auth_settings(settings: Settings, resource: str) -> AuthSettings:
    """The SDK's resource-server settings: the issuer clients get tokens from, and this resource."""
    assert settings.oauth_issuer is not None
    return AuthSettings(
        issuer_url=settings.oauth_issuer,  # type: ignore[arg-type]  # validated as a URL by pydantic
        resource_server_url=resource,  # type: ignore[arg-type]
        validate_token_resource=False,  # JwtVerifier checks the audience itself, which need not be a URL
    )
