"""All of fal-flux-mcp's configuration, read once from the environment and passed in from there.

Nothing else in the package reads ``os.environ``: a test or an embedding application builds a
``Settings`` with the values it wants, and the code under it sees only that object.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fal_flux_mcp._setting_types import (
    USER_BUDGETS,
    UserBudget,
    default_output_dir,
    default_state_dir,
    off_is_none,
)

__all__ = ["OAUTH_FIELDS", "Settings", "UserBudget", "environment_help"]

#: The settings that turn OAuth on, all together.
OAUTH_FIELDS = ("oauth_issuer", "oauth_audience", "oauth_jwks_url")


class Settings(BaseSettings):
    """fal-flux-mcp's settings. Environment names are ``FLUX_MCP_<FIELD>``, except fal's own ``FAL_KEY*``."""

    model_config = SettingsConfigDict(env_prefix="FLUX_MCP_", extra="ignore", populate_by_name=True)

    fal_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("FAL_KEY", "fal_key"),
        description="fal API key, '<key_id>:<key_secret>', from https://fal.ai/dashboard/keys.",
    )
    fal_key_id: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("FAL_KEY_ID", "fal_key_id"),
        description="The key's id, with FAL_KEY_SECRET, instead of FAL_KEY.",
    )
    fal_key_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("FAL_KEY_SECRET", "fal_key_secret"),
        description="The key's secret, with FAL_KEY_ID, instead of FAL_KEY.",
    )
    fal_url: str | None = Field(
        default=None,
        description="One http(s) origin (e.g. the emulator's http://127.0.0.1:8765) that replaces every "
        "fal host; unset: fal.",
    )
    wait_seconds: float = Field(
        default=45.0,
        gt=0,
        le=3600,
        description="How long generate_image waits before handing back a job id (under clients' ~60 s limit).",
    )
    output_dir: Path = Field(
        default_factory=default_output_dir, description="Absolute folder the images are saved in."
    )
    state_dir: Path = Field(
        default_factory=default_state_dir, description="Absolute folder of the job journal and previews."
    )
    allowed_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description=f"Absolute folders local input images may come from, separated by {os.pathsep!r}.",
    )
    http_token: SecretStr | None = Field(
        default=None,
        description="Bearer token HTTP transports require, for a server one person uses; not together with "
        "the OAuth settings.",
    )
    oauth_issuer: str | None = Field(
        default=None,
        description="OAuth: the authorization server whose JWTs the HTTP transports accept (the tokens' "
        "iss); with FLUX_MCP_OAUTH_AUDIENCE and FLUX_MCP_OAUTH_JWKS_URL, all three or none.",
    )
    oauth_audience: str | None = Field(
        default=None,
        description="OAuth: the aud a token must carry to be accepted here; an http(s) URL is also "
        "advertised as this server's resource URL.",
    )
    oauth_jwks_url: str | None = Field(
        default=None,
        description="OAuth: the issuer's JWKS (public keys), https (http only on loopback).",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://user:password@host:port/database: the job journal in PostgreSQL, shared by "
        "every server pointed at it; unset: a SQLite file in FLUX_MCP_STATE_DIR.",
    )
    request_state_keys: SecretStr | None = Field(
        default=None,
        description="Replicas: secrets (each at least 32 bytes, comma-separated) every replica shares, so "
        "that a spend approval asked by one is answered on any; the first seals, all unseal (rotation). "
        "Unset: a key of this process's own.",
    )
    stateless_http: bool | None = Field(
        default=None,
        description="Streamable HTTP without sessions for clients of protocol 2025-11-25 and older, so "
        "that any replica answers them (they lose mid-call questions and change notifications); unset: "
        "on when FLUX_MCP_REQUEST_STATE_KEYS is set.",
    )
    lease_seconds: float = Field(
        default=10.0,
        ge=0.5,
        le=600,
        description="How long a server's claim on following an unfinished job lasts unless renewed (every "
        "third of it); a server that dies has its jobs taken over by another this long after.",
    )
    replica_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="This server's name in the journal's leases (which server follows which job); unset: "
        "host, process id and a random part.",
    )
    user_keys: bool = Field(
        default=False,
        description="on: each user brings their own fal key, entered on a page this server serves (over "
        "HTTP, reached through URL-mode elicitation) and used only for that user's jobs; the server's key "
        "is then never used for anyone's jobs. Needs FLUX_MCP_USER_KEYS_SECRET.",
    )
    user_keys_secret: SecretStr | None = Field(
        default=None,
        description="With FLUX_MCP_USER_KEYS=on: a random secret of at least 32 bytes (e.g. `openssl rand "
        "-base64 48`), the same on every replica, that seals the users' fal keys at rest and signs the links "
        "to the key page. Changing it makes the stored keys unreadable: users then enter them again.",
    )
    public_url: str | None = Field(
        default=None,
        description="The origin users' browsers reach this server at (e.g. https://flux.example.com, no "
        "path), for the link to the key page; unset: the origin of the MCP request.",
    )
    max_usd_per_call: Annotated[float | None, BeforeValidator(off_is_none)] = Field(
        default=0.50,
        ge=0,
        description="The most one tool call may spend without asking the user, in USD; 0: ask every "
        "time; off: no limit.",
    )
    daily_budget_usd: Annotated[float | None, BeforeValidator(off_is_none)] = Field(
        default=5.0,
        ge=0,
        description="The most all calls may spend per calendar day (local time) without asking, in USD; "
        "0: ask every time; off: no limit.",
    )
    approval_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="How long a call over a limit waits for the user to answer the spend question "
        "(on connections that ask mid-call); no answer: nothing is spent.",
    )
    monthly_budget_usd: Annotated[float | None, BeforeValidator(off_is_none)] = Field(
        default=None,
        ge=0,
        description="The most all calls may spend per calendar month without asking, in USD; 0: ask "
        "every time; off (the default): no limit.",
    )
    user_budgets: Annotated[dict[str, UserBudget], NoDecode] = Field(
        default_factory=dict,
        description='Limits per user (the OAuth token\'s sub), as JSON: {"<sub>": {"daily_usd": 5, '
        '"monthly_usd": 50, "max_usd_per_call": 1}}; a limit left out is everyone\'s (above); "off": no limit.',
    )
    keep_days: Annotated[float | None, BeforeValidator(off_is_none)] = Field(
        default=30.0,
        gt=0,
        description="Days the previews and journal entries of finished jobs are kept (fractions "
        "allowed); off: kept for ever. Saved images in the output folder are never deleted.",
    )
    preview_max_edge: int = Field(
        default=1024, ge=64, le=4096, description="Longest edge, in pixels, of the inline previews."
    )
    upload_max_bytes: int = Field(
        default=50 * 1024 * 1024, gt=0, description="Largest file upload_file accepts, in bytes."
    )
    allow_hard_links: bool = Field(
        default=False,
        description="Upload files that have more than one hard link. Off: a hard link inside an allowed "
        "folder can name any file on the same filesystem.",
    )
    reconcile_window_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="How long after a submission whose answer was lost fal's request history is searched "
        "for it before it is taken as never received.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Level of the logs written to stderr."
    )
    retry_attempts: int = Field(
        default=8, ge=1, le=20, description="Tries per fal request (see RetryPolicy)."
    )
    retry_base_delay: float = Field(default=0.1, ge=0, le=10, description="First backoff delay, seconds.")
    retry_max_delay: float = Field(default=10.0, ge=0, le=60, description="Longest backoff delay, seconds.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("fal_url", "public_url", mode="after")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        # Checked here rather than at the first fal call, so that a typo stops the server at start.
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
            raise ValueError("not an http(s) origin such as http://127.0.0.1:8765 (no path)")
        return value.strip()

    @field_validator("user_budgets", mode="before")
    @classmethod
    def _user_budgets(cls, value: object) -> object:
        # Parsed and checked here, so that a typo stops the server at start with the user and limit named.
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(value, dict):
            raise ValueError("not a JSON object of users")
        try:
            return USER_BUDGETS.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = " > ".join(repr(part) for part in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ValueError(
                f"{where}: {message} (each user takes daily_usd, monthly_usd and max_usd_per_call, each a "
                'number >= 0 or "off")'
            ) from None

    @field_validator("database_url", mode="after")
    @classmethod
    def _postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (the only database besides the built-in SQLite)")
        return value

    @field_validator("request_state_keys", mode="after")
    @classmethod
    def _key_ring(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        keys = [key.strip() for key in value.get_secret_value().split(",")]
        if any(len(key.encode()) < 32 for key in keys):
            raise ValueError(
                "every key must be at least 32 bytes (python -c 'import secrets; print(secrets.token_hex(32))' "
                "makes one), separated by commas"
            )
        if len(set(keys)) < len(keys):
            raise ValueError("a key is listed twice")
        return value

    @field_validator("oauth_issuer", "oauth_audience", "oauth_jwks_url", mode="after")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() if value is not None and value.strip() else None

    @field_validator("oauth_issuer", mode="after")
    @classmethod
    def _issuer_url(cls, value: str | None) -> str | None:
        # The SDK advertises the issuer in the protected resource metadata, where only a URL makes sense.
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("not an http(s) URL such as https://auth.example.com")
        return value

    @field_validator("oauth_jwks_url", mode="after")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        # Keys fetched over plain http could be replaced on the way: anyone on the path could sign tokens.
        if value is None:
            return None
        parts = urlsplit(value)
        loopback = (parts.hostname or "") in ("localhost", "127.0.0.1", "::1")
        if not parts.hostname or (parts.scheme != "https" and not (parts.scheme == "http" and loopback)):
            raise ValueError("not an https URL such as https://auth.example.com/.well-known/jwks.json")
        return value

    @model_validator(mode="after")
    def _oauth_together(self) -> Settings:
        oauth = {name: getattr(self, name) for name in OAUTH_FIELDS}
        missing = [self.env_name(name) for name, value in oauth.items() if value is None]
        if missing and len(missing) < len(oauth):
            raise ValueError(
                f"{', '.join(self.env_name(name) for name in OAUTH_FIELDS)} go together: set all three or "
                f"none ({' and '.join(missing)} missing)"
            )
        if not missing and self.http_token is not None and self.http_token.get_secret_value():
            raise ValueError(
                f"{self.env_name('http_token')} and the OAuth settings are exclusive: the token is for a "
                "server one person uses, OAuth for a team; unset one of them"
            )
        return self

    @model_validator(mode="after")
    def _user_keys_sealed(self) -> Settings:
        if not self.user_keys:
            return self
        secret = self.user_keys_secret.get_secret_value() if self.user_keys_secret is not None else ""
        if len(secret.encode()) < 32:
            raise ValueError(
                f"{self.env_name('user_keys')}=on needs {self.env_name('user_keys_secret')}: a random secret "
                f"of at least 32 bytes (e.g. the output of `openssl rand -base64 48`), "
                f"{'which is unset' if not secret else f'not {len(secret.encode())} bytes'}"
            )
        return self

    @property
    def oauth(self) -> bool:
        """Whether the HTTP transports take JWTs from an OAuth issuer (and nothing else)."""
        return all(getattr(self, name) is not None for name in OAUTH_FIELDS)

    def request_state_key_ring(self) -> list[str] | None:
        """The shared request-state keys, sealing one first; None: this process's own key."""
        if self.request_state_keys is None:
            return None
        return [key.strip() for key in self.request_state_keys.get_secret_value().split(",")]

    @property
    def sessionless_legacy_http(self) -> bool:
        """Whether Streamable HTTP serves pre-2026 clients without sessions (any replica answers them)."""
        return self.stateless_http if self.stateless_http is not None else self.request_state_keys is not None

    @field_validator("allowed_dirs", mode="before")
    @classmethod
    def _split_path_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("output_dir", "state_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    def fal_credentials(self) -> str | None:
        """The credential string for ``Authorization: Key ...``: ``FAL_KEY``, else ``FAL_KEY_ID:FAL_KEY_SECRET``."""
        # Surrounding blanks are a copy-and-paste accident, never part of a key.
        if self.fal_key is not None and self.fal_key.get_secret_value().strip():
            return self.fal_key.get_secret_value().strip()
        if self.fal_key_id is not None and self.fal_key_secret is not None:
            key_id = self.fal_key_id.get_secret_value().strip()
            return f"{key_id}:{self.fal_key_secret.get_secret_value().strip()}"
        return None

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets ``field``: what a person typed, unlike the field's name."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            return alias.choices[0]
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @classmethod
    def is_secret(cls, field: str) -> bool:
        """Whether the value of ``field`` must never be shown (in help, errors or logs)."""
        return "SecretStr" in str(cls.model_fields[field].annotation)

    @classmethod
    def default_text(cls, field: str) -> str:
        """The field's default as a person would write it in the environment ("unset" for none)."""
        default = cls.model_fields[field].get_default(call_default_factory=True)
        if default is None:
            return "unset"
        if isinstance(default, bool):
            return str(default).lower()
        if isinstance(default, list):
            return os.pathsep.join(str(item) for item in default) or "none"
        if isinstance(default, dict):
            return json.dumps(default) if default else "none"
        if isinstance(default, float) and default.is_integer():
            return str(int(default))
        return str(default)


def environment_help() -> str:
    """Every environment variable with its default and meaning, generated so that ``--help`` cannot drift."""
    lines = ["environment variables (the only configuration):"]
    for field, info in Settings.model_fields.items():
        lines.append(f"  {Settings.env_name(field)}  (default: {Settings.default_text(field)})")
        if info.description:
            lines += textwrap.wrap(info.description, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)
