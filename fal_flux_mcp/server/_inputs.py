"""From a tool's arguments to the input fal receives: checked against the model, local images uploaded.

Everything that can refuse a job is done here, before anything is paid for: the fields the chosen
model does not take, its fal schema, and the input image, which may be an https URL, a data URI, or a
local file inside the allowed folders that is uploaded to fal's storage first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fal_flux_mcp.fal import ValidationError, validate_input
from fal_flux_mcp.models import FalInput, image_size_for_aspect_ratio
from fal_flux_mcp.registry import MODELS, ModelInfo
from fal_flux_mcp.server._errors import JobError
from fal_flux_mcp.server._schemas import GenerationParams
from fal_flux_mcp.server._uploads import UploadRefused, decode_image_data, open_local_image
from fal_flux_mcp.settings import Settings

if TYPE_CHECKING:
    from fal_flux_mcp.fal import FalClient

#: The folders local input images may come from; asked for only when an input is a local path (asking
#: may mean a round trip to the MCP client for its roots).
AllowedDirs = Callable[[], Awaitable[Sequence[Path]]]
#: Data URIs larger than this are uploaded rather than sent inline in the request body.
_INLINE_DATA_URI_BYTES = 256 * 1024


async def no_dirs() -> Sequence[Path]:
    """No folder is allowed: local paths are refused."""
    return ()


def tool_fields_for(model: ModelInfo) -> list[str]:
    """The generation arguments a model takes, by the tools' names (aspect_ratio works for every model)."""
    taken = set(model.parameters) | {"model", "aspect_ratio", "max_cost_usd"}
    return [name for name in GenerationParams.model_fields if name in taken]


class InputBuilder:
    """Builds and checks fal inputs; uploads local input images through the one fal client."""

    def __init__(self, settings: Settings, fal: Callable[[], FalClient]) -> None:
        self.settings = settings
        self._fal = fal

    @property
    def fal(self) -> FalClient:
        return self._fal()

    def build(self, params: GenerationParams) -> tuple[ModelInfo, dict[str, Any]]:
        """The fal arguments for ``params``; a ``JobError`` naming the fields if the model does not take one.

        ``image_url`` is left as given: it may still be a local path to upload (``prepare``).
        """
        model = MODELS[params.model]
        accepted = model.parameters
        fields = params.model_dump(exclude_none=True, exclude={"model", "webhook_url", "max_cost_usd"})
        if "aspect_ratio" in fields and "aspect_ratio" not in accepted and "image_size" in accepted:
            if "image_size" in fields:
                raise JobError(
                    f"Give either aspect_ratio or image_size, not both: {model.endpoint_id} is sized by "
                    "image_size, and aspect_ratio is turned into one."
                )
            size = image_size_for_aspect_ratio(fields.pop("aspect_ratio"))
            fields["image_size"] = size if isinstance(size, str) else size.model_dump()
        unsupported = [name for name in fields if name not in accepted]
        if unsupported:
            hint = " Use aspect_ratio to shape the image." if "image_size" in unsupported else ""
            raise JobError(
                f"{model.endpoint_id} does not take {', '.join(unsupported)}. It takes: "
                f"{', '.join(tool_fields_for(model))}.{hint} Remove the field or pick another model (list_models)."
            )
        if model.requires_image and "image_url" not in fields:
            raise JobError(
                f"{model.endpoint_id} ({model.title}) works on an input image: pass image_url, an https URL "
                "or a local file path inside the allowed directories."
            )
        if model.task == "text-to-image" and not params.prompt.strip():
            raise JobError(f"{model.endpoint_id} needs a prompt describing the image.")
        return model, fields

    async def prepare(
        self, params: GenerationParams, allowed_dirs: AllowedDirs
    ) -> tuple[ModelInfo, FalInput]:
        """Validate everything and upload a local ``image_url``: after this, submitting cannot be refused."""
        model, fields = self.build(params)
        given_url = fields.get("image_url")
        self.checked(params)  # every other field first: a bad value must cost neither money nor time
        if given_url:
            fields["image_url"] = await self.resolve_image_url(given_url, allowed_dirs)
        return model, self._validate(model, fields)

    def checked(self, params: GenerationParams) -> tuple[ModelInfo, FalInput]:
        """The model and fal input for ``params``, with a stand-in for an input image not uploaded yet.

        Enough to check every value and to price the job before anything is uploaded or asked.
        """
        model, fields = self.build(params)
        if fields.get("image_url"):
            fields["image_url"] = "https://example.invalid/input.png"
        return model, self._validate(model, fields)

    @staticmethod
    def _validate(model: ModelInfo, fields: dict[str, Any]) -> FalInput:
        try:
            return validate_input(model.endpoint_id, fields)
        except ValidationError as exc:
            raise JobError(f"{exc.message}. Fix the value and call again.") from None

    async def resolve_image_url(self, value: str, allowed_dirs: AllowedDirs) -> str:
        """An URL fal can fetch: http(s) as is, a large data URI or a local file uploaded to fal first."""
        scheme = urlsplit(value).scheme.lower()
        if scheme in ("http", "https"):
            return value
        if scheme == "data":
            if len(value) <= _INLINE_DATA_URI_BYTES:
                return value
            try:
                decoded = decode_image_data(value, None, self.settings.upload_max_bytes)
            except UploadRefused as exc:
                raise JobError(f"image_url: {exc}") from None
            return await self.fal.upload_bytes(
                decoded.data, content_type=decoded.content_type, file_name=decoded.file_name
            )
        settings = self.settings
        try:
            local = await open_local_image(
                value,
                await allowed_dirs(),
                settings.upload_max_bytes,
                allow_hard_links=settings.allow_hard_links,
            )
        except UploadRefused as exc:
            raise JobError(f"image_url: {exc}") from None
        with local:
            return await self.fal.upload_from_file(
                local, size=local.size, content_type=local.content_type, file_name=local.file_name
            )


def journal_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The input as sent, with an inline data URI shortened: the journal keeps facts, not image bytes."""
    image_url = arguments.get("image_url")
    if isinstance(image_url, str) and image_url.startswith("data:"):
        return arguments | {"image_url": f"{image_url.split(',', 1)[0]},<{len(image_url)} characters>"}
    return arguments
