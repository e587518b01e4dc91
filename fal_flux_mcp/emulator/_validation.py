"""Input validation the way a fal app answers it: FastAPI-style 422 ``detail`` lists.

The emulator validates with the package's own models (``fal_flux_mcp.models``), so it rejects exactly
what the client-side pre-check rejects; the only freedom is what happens to unknown fields.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import pydantic

from fal_flux_mcp.models import INPUT_MODELS, FalInput, field_errors

FieldErrors = list[dict[str, Any]]


def parse_body(raw: bytes) -> tuple[Any, FieldErrors | None]:
    """The JSON body, or the 422 entries FastAPI gives for a missing or malformed one."""
    if not raw.strip():
        return None, [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
    try:
        return json.loads(raw), None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        position = getattr(exc, "pos", 0)
        reason = getattr(exc, "msg", str(exc))
        return None, [
            {
                "type": "json_invalid",
                "loc": ["body", position],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": reason},
            }
        ]


def validate(
    endpoint_id: str, body: Any, *, reject_unknown: bool
) -> tuple[FalInput | None, FieldErrors | None]:
    """The validated input, or the 422 ``detail`` list fal would answer with."""
    model = INPUT_MODELS[endpoint_id]
    if not reject_unknown:
        body = _strip_unknown(model, body)
    try:
        return model.model_validate(body), None
    except pydantic.ValidationError as exc:
        return None, field_errors(exc, include_input=True)


def _strip_unknown(model: type[pydantic.BaseModel], value: Any) -> Any:
    """``value`` without the keys ``model`` does not declare, nested models included."""
    if not isinstance(value, dict):
        return value
    cleaned: dict[str, Any] = {}
    for name, item in value.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        nested = _nested_model(field.annotation)
        cleaned[name] = _strip_unknown(nested, item) if nested is not None else item
    return cleaned


def _nested_model(annotation: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None
