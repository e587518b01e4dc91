"""The kinds of value the settings are made of: limits that may be off, users' budgets, default folders.

Kept apart from ``settings`` so that the one settings object reads as the list of what can be set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import platformdirs
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter


def off_is_none(value: object) -> object:
    """``off`` (or an empty value) means no limit, which is None."""
    if isinstance(value, str) and value.strip().lower() in ("off", "none", ""):
        return None
    return value


#: A limit in USD: a number >= 0, or off (None): no limit.
Limit = Annotated[Annotated[float, Field(ge=0)] | None, BeforeValidator(off_is_none)]


class UserBudget(BaseModel):
    """One user's limits in ``FLUX_MCP_USER_BUDGETS``; a limit left out is everyone's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    daily_usd: Limit = None
    monthly_usd: Limit = None
    max_usd_per_call: Limit = None


USER_BUDGETS = TypeAdapter(dict[str, UserBudget])


def default_output_dir() -> Path:
    return Path(platformdirs.user_pictures_dir()) / "fal-flux-mcp"


def default_state_dir() -> Path:
    state = Path(platformdirs.user_data_dir("fal-flux-mcp", appauthor=False))
    # Until the rename the folder had the legacy name: keep using a journal that is already there, so the
    # jobs it holds (some perhaps unfinished and paid for) are still followed.
    legacy = Path(platformdirs.user_data_dir("flux-mcp", appauthor=False))
    if not state.exists() and (legacy / "jobs.sqlite3").is_file():
        return legacy
    return state
