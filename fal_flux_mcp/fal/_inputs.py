"""Checking a request against the endpoint's model before it is sent: a bad value costs nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from fal_flux_mcp.fal._exceptions import NotFoundError, ValidationError, describe_field_errors
from fal_flux_mcp.models import INPUT_MODELS, FalInput, field_errors


def validate_input(endpoint_id: str, arguments: FalInput | Mapping[str, Any]) -> FalInput:
    """``arguments`` as the endpoint's input model; ``ValidationError`` with fal-style field errors if not."""
    model = INPUT_MODELS.get(endpoint_id)
    if model is None:
        raise NotFoundError(
            f"fal-flux-mcp does not know the endpoint {endpoint_id!r}; known: {', '.join(INPUT_MODELS)}"
        )
    if isinstance(arguments, model):
        return arguments
    raw = arguments.model_dump() if isinstance(arguments, pydantic.BaseModel) else dict(arguments)
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        errors = field_errors(exc)
        raise ValidationError(
            f"invalid input for {endpoint_id}: {describe_field_errors(errors)}", errors
        ) from None
