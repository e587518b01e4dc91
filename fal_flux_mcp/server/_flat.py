"""Publishing a pydantic model as a tool's flat argument list.

The SDK builds a tool's input schema from the function's signature. A tool written as
``async def generate_image(params: GenerationParams, ctx: Context)`` would publish ``params`` as one
nested object, which LLMs fill in less reliably than flat properties. ``flat_arguments`` gives the
function a signature made of the model's fields (descriptions, bounds and defaults included), then
rebuilds the model from the flat arguments before calling the function, so the model stays the one
definition of what the tool accepts.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar, get_type_hints

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from fal_flux_mcp.server._arguments import describe_validation_error

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


def flat_arguments(
    model: type[M],
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """Decorate ``async def tool(params: model, ...)`` so that its schema lists ``model``'s fields."""

    def decorate(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        hints = get_type_hints(fn, include_extras=True)
        original = inspect.signature(fn)
        passthrough = [
            p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
            for p in original.parameters.values()
            if p.name != "params"
        ]
        fields = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[field.annotation, field],
                default=inspect.Parameter.empty if field.is_required() else field.get_default(),
            )
            for name, field in model.model_fields.items()
        ]
        passthrough_names = {p.name for p in passthrough}

        @functools.wraps(fn)
        async def wrapper(**kwargs: Any) -> R:
            extra = {name: kwargs.pop(name) for name in list(kwargs) if name in passthrough_names}
            try:
                params = model.model_validate(kwargs)
            except PydanticValidationError as exc:  # checked before the call already; kept as a guard
                raise ToolError(describe_validation_error(exc, model)) from None
            return await fn(params=params, **extra)

        return_annotation = hints.get("return", original.return_annotation)
        wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [*fields, *passthrough], return_annotation=return_annotation
        )
        wrapper.__annotations__ = {p.name: p.annotation for p in [*fields, *passthrough]} | {
            "return": return_annotation
        }
        del wrapper.__wrapped__  # type: ignore[attr-defined]  # or inspect.signature follows it back
        return wrapper

    return decorate
