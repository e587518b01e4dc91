"""Reading the settings at start and saying, in the user's own terms, what is wrong with them.

A server launched by an MCP client shows nothing but its stderr, and only when someone goes looking:
a pydantic traceback naming ``wait_seconds`` there, or a folder that turns out unwritable at the first
paid image, costs far more than one line per problem naming the variable that was set, the value, and
the fix. Secrets are never quoted.
"""

from __future__ import annotations

import os
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fal_flux_mcp.fal._keys import key_problem
from fal_flux_mcp.settings import Settings

KEYS_PAGE = "https://fal.ai/dashboard/keys"


@dataclass
class ConfigCheck:
    """Settings read from the environment, with what stops the server and what only deserves a warning.

    With problems, ``settings`` holds the defaults in place of the values that failed, so that the rest
    could still be checked; it must not be served.
    """

    settings: Settings
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_config(*, create_folders: bool) -> ConfigCheck:
    """Load ``Settings`` from the environment and check it the way serving would use it.

    ``create_folders``: create the output and state folders (what serving does anyway) and prove they
    are writable; otherwise only prove that they could be, leaving the file system as it was.
    """
    problems: list[str] = []
    try:
        settings = Settings()
    except ValidationError as exc:
        failed: dict[str, Any] = {}
        for error in exc.errors():
            name = _field_of(error)
            problems.append(_describe(name, error))
            if name is not None:
                failed[name] = Settings.model_fields[name].get_default(call_default_factory=True)
        try:
            settings = Settings(**failed)
        except ValidationError:  # an error not traced to one field: nothing more can be checked
            return ConfigCheck(Settings.model_construct(), problems)
    check = ConfigCheck(settings, problems)
    create = create_folders and not problems  # a start that will fail anyway leaves no folders behind
    for name in ("output_dir", "state_dir"):
        if (problem := _folder_problem(name, getattr(settings, name), create)) is not None:
            check.problems.append(problem)
    placeholders = [folder for folder in settings.allowed_dirs if "<" in str(folder) or ">" in str(folder)]
    if placeholders:
        # mcp.json's example value: harmless, so a warning (like a placeholder key), and then ignored.
        settings.allowed_dirs = [folder for folder in settings.allowed_dirs if folder not in placeholders]
        check.warnings.append(
            f"{Settings.env_name('allowed_dirs')} is still the placeholder from the example configuration; "
            "it is ignored, so no local folder is readable. Name absolute folders, separated by "
            f"{os.pathsep!r}, or remove the variable."
        )
    for folder in settings.allowed_dirs:
        if not folder.is_absolute():
            check.problems.append(
                f"{Settings.env_name('allowed_dirs')}: the entry {str(folder)!r} is relative, and a server "
                "started by an MCP client has no predictable working folder; give absolute paths, "
                f"separated by {os.pathsep!r}."
            )
    if (warning := _key_warning(settings)) is not None:
        check.warnings.append(warning)
    return check


def _field_of(error: Any) -> str | None:
    loc = error.get("loc") or ()
    if not loc:
        return None
    first = str(loc[0])
    if first in Settings.model_fields:
        return first
    for name in Settings.model_fields:  # an alias (FAL_KEY) rather than the field's name
        if Settings.env_name(name) == first:
            return name
    return None


def _describe(name: str | None, error: Any) -> str:
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if name is None:
        return f"the configuration is invalid: {message}."
    variable = Settings.env_name(name)
    given = "(hidden)" if Settings.is_secret(name) else repr(error.get("input"))
    default = Settings.default_text(name)
    unset = "or unset it" + ("" if default == "unset" else f" for the default, {default}")
    return f"{variable}={given}: {message}. Allowed: {_allowed(name)}; {unset}."


def _allowed(name: str) -> str:
    """What a field accepts, in words: its type and bounds, from the model so that it cannot drift."""
    info = Settings.model_fields[name]
    annotation = info.annotation
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(str(arg) for arg in typing.get_args(annotation))
    if annotation is bool or args == [bool]:  # bool | None: unset has a meaning of its own
        return "true or false (also 1/0, yes/no, on/off)"
    kinds = {int: "a whole number", float: "a number"}
    text = kinds.get(annotation) if isinstance(annotation, type) else None
    if text is None:
        text = "a text" if str in args else "a value"
    if name == "fal_url":
        text = "an http(s) origin with no path, e.g. http://127.0.0.1:8765 (unset: fal itself)"
    if name == "user_budgets":
        text = (
            'a JSON object such as {"<sub>": {"daily_usd": 5, "monthly_usd": 50, "max_usd_per_call": "off"}}'
        )
    words = {"gt": "greater than", "ge": "at least", "lt": "less than", "le": "at most"}
    bounds = [
        f"{words[attr]} {getattr(meta, attr)}"
        for meta in info.metadata
        for attr in words
        if getattr(meta, attr, None) is not None
    ]
    return text + (" " + " and ".join(bounds) if bounds else "")


def _folder_problem(name: str, folder: Path, create: bool) -> str | None:
    variable = Settings.env_name(name)
    given = f"{variable}={str(folder)!r}"
    if not folder.is_absolute():
        return (
            f"{given} is relative, and a server started by an MCP client has no predictable working "
            "folder; give an absolute path."
        )
    if folder.exists() and not folder.is_dir():
        return f"{given} is a file, not a folder; name a folder (it is created if missing)."
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"{given} cannot be created ({exc.strerror or exc}); name a folder you can write to."
        probe = folder
    else:
        probe = folder
        while not probe.exists():  # the folder would be created inside its nearest existing parent
            probe = probe.parent
        if not probe.is_dir():
            return f"{given} cannot be created: {str(probe)!r} is a file; name a folder you can write to."
    # os.access says what the mode bits allow, not what a read-only mount or an ACL does: really write.
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".fal-flux-mcp-probe-"):
            pass
    except OSError as exc:
        verb = "is not writable" if probe == folder else f"cannot be created in {str(probe)!r}"
        return f"{given} {verb} ({exc.strerror or exc}); name a folder you can write to."
    return None


def _key_warning(settings: Settings) -> str | None:
    """A start-time word about the fal key. Not a reason to refuse to start: ``list_models`` and
    the jobs already made work without a key, and a tool call then explains the problem in the chat,
    where the user looks, while a server that exits shows up as a bare "disconnected"."""
    if settings.user_keys:
        return None  # each user brings their own key; the server's is never used
    key = settings.fal_credentials()
    variable = "FAL_KEY" if settings.fal_key is not None else "FAL_KEY_ID/FAL_KEY_SECRET"
    if key is None:
        return (
            f"FAL_KEY is not set: making images will fail until it is. Create a key at {KEYS_PAGE} and "
            "set FAL_KEY=key_id:key_secret in the server's environment."
        )
    if (problem := key_problem(key)) is not None:
        return (
            f"{variable} (hidden) {problem}: nothing will be sent to fal with it, and making images fails "
            f"until it is replaced. Create a key at {KEYS_PAGE} and set FAL_KEY=key_id:key_secret in the "
            "server's environment."
        )
    return None
