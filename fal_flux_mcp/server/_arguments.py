"""Checking a tool call's arguments before anything runs, and saying what is wrong in plain words.

The SDK drops an argument a tool does not declare without a word, so a misspelled ``aspectratio``
or an unsupported ``negative_prompt`` would be paid for with the defaults; and its validation errors
are pydantic's own text. ``check_arguments`` validates the call against the tool's pydantic model
(unknown fields forbidden) and turns each problem into one sentence: the argument, what was given,
and what is allowed. ``FluxServer.call_tool`` runs it for every tool before the SDK sees the call.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

#: Arguments LLMs bring from other image APIs: the argument meant here, and why it is different.
_KNOWN_FOREIGN = {
    "negative_prompt": (
        "prompt",
        "FLUX on fal takes no negative prompt: say in prompt what the image should show",
    ),
    "width": ("aspect_ratio", "sizes are chosen by aspect_ratio"),
    "height": ("aspect_ratio", "sizes are chosen by aspect_ratio"),
    "size": ("aspect_ratio", "sizes are chosen by aspect_ratio"),
    "n": ("num_images", ""),
    "steps": ("num_inference_steps", ""),
    "cfg_scale": ("guidance_scale", ""),
}
_LONGEST_SHOWN = 80


def check_arguments(tool: str, model: type[BaseModel], arguments: Mapping[str, Any]) -> str | None:
    """What is wrong with ``arguments`` for ``tool``, as sentences for the caller; None when all is well."""
    known = list(model.model_fields)
    unknown = [name for name in arguments if name not in model.model_fields]
    if unknown:
        return " ".join(_unknown_argument(tool, name, known) for name in unknown) + (
            f" {tool} takes: {', '.join(known) or 'no arguments'}. Nothing was sent to fal."
        )
    try:
        model.model_validate(dict(arguments))
    except ValidationError as exc:
        return describe_validation_error(exc, model)
    return None


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """pydantic's errors as one sentence each, naming the argument, the value and what is allowed."""
    sentences = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"])
        field = model.model_fields.get(str(error["loc"][0])) if error["loc"] else None
        sentences.append(_sentence(name, field, error))
    return " ".join(dict.fromkeys(sentences)) + " Nothing was sent to fal."


def _unknown_argument(tool: str, name: str, known: list[str]) -> str:
    text = f"{tool} has no argument '{name}'"
    meant, reason = _KNOWN_FOREIGN.get(name.lower(), ("", ""))
    nearest = meant if meant in known else _nearest(name, known)
    if nearest:
        text += f" (did you mean '{nearest}'?)"
    return f"{text}{'; ' + reason if reason and nearest == meant else ''}."


def _nearest(name: str, known: list[str]) -> str | None:
    """The known argument ``name`` was most likely meant to be, spelled however the caller spelled it."""

    def squash(text: str) -> str:
        return text.lower().replace("_", "").replace("-", "")

    by_squashed = {squash(k): k for k in known}
    if squash(name) in by_squashed:
        return by_squashed[squash(name)]
    close = difflib.get_close_matches(squash(name), list(by_squashed), n=1, cutoff=0.5)
    if close:
        return by_squashed[close[0]]
    contained = [k for k in known if k in name.lower() or name.lower() in k]
    return max(contained, key=len) if contained else None


def _sentence(name: str, field: FieldInfo | None, error: Mapping[str, Any]) -> str:
    kind = error["type"]
    given = _shown(error.get("input"))
    ctx = error.get("ctx") or {}
    if kind == "missing":
        what = f": {field.description}" if field is not None and field.description else ""
        return f"{name} is required{what.rstrip('.')}."
    if not name:  # a rule across several arguments (a model validator)
        text = str(ctx.get("error") or error["msg"]).rstrip(".")
        return f"{text[:1].upper()}{text[1:]}."
    if kind in ("literal_error", "enum"):
        return f"{name} {given} is not allowed; use one of {ctx.get('expected')}."
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{name} {given} is out of range; allowed: {_bounds(field) or error['msg'].lower()}."
    if kind == "string_too_long":
        return (
            f"{name} is too long ({len(str(error.get('input')))} characters); "
            f"the most is {ctx.get('max_length')}."
        )
    if kind == "string_too_short":
        return f"{name} is empty; give a value or leave the argument out."
    if kind == "string_pattern_mismatch" and name == "webhook_url":
        return f"webhook_url {given} is not a URL; give one starting with https://."
    expected = {
        "int_parsing": "a whole number",
        "int_type": "a whole number",
        "int_from_float": "a whole number",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "text",
    }.get(kind)
    if expected:
        bounds = _bounds(field)
        return f"{name} {given} is not {expected}{f' ({bounds})' if bounds else ''}."
    return f"{name} {given} is not valid: {str(error['msg']).rstrip('.').lower()}."


def _bounds(field: FieldInfo | None) -> str:
    """A field's numeric bounds in words ('1 to 4', 'at least 0')."""
    if field is None:
        return ""
    low = high = None
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge | annotated_types.Gt):
            low = item.ge if isinstance(item, annotated_types.Ge) else f"more than {item.gt}"
        if isinstance(item, annotated_types.Le | annotated_types.Lt):
            high = item.le if isinstance(item, annotated_types.Le) else f"less than {item.lt}"
    if low is not None and high is not None:
        return f"{_number(low)} to {_number(high)}"
    if low is not None:
        return f"at least {_number(low)}"
    if high is not None:
        return f"at most {_number(high)}"
    return ""


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _LONGEST_SHOWN else text[: _LONGEST_SHOWN - 1] + "…'"
