"""fal's storage routes: CDN tokens and uploads (single, multipart, signed URL) and file downloads.

They stand in for ``rest.fal.ai``'s storage API and ``v3.fal.media``; the files themselves are kept
by ``FileStore``. A download of a generated image still rendering waits for it, as a CDN fetch would.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from fal_flux_mcp.emulator._auth import check_key, check_token
from fal_flux_mcp.emulator._core import Core
from fal_flux_mcp.emulator._responses import iso_time, json_response, request_origin, with_faults
from fal_flux_mcp.emulator._storage import StorageError
from fal_flux_mcp.emulator._validation import parse_body


def storage_routes(core: Core) -> list[Route]:
    """The storage and file routes, in matching order (``/files/{path:path}`` after the upload paths)."""

    async def token(request: Request) -> Response:
        if (denied := check_key(core.config, request)) is not None:
            return denied
        storage_type = request.query_params.get("storage_type", "fal-cdn-v3")
        if storage_type != "fal-cdn-v3":
            return json_response({"detail": f"Unsupported storage type {storage_type!r}"}, 400)
        value, expires = core.files.issue_token(core.config.token_ttl_seconds)
        return json_response(
            {
                "token": value,
                "token_type": "Bearer",
                "base_url": request_origin(request),
                "expires_at": iso_time(expires),
            }
        )

    async def upload(request: Request) -> Response:
        if (denied := check_token(core.files, request)) is not None:
            return denied
        mime = request.headers.get("content-type") or "application/octet-stream"
        key = core.files.new_key(request.headers.get("x-fal-file-name"), mime)
        await core.files.put_stream(key, request.stream(), mime)
        return json_response({"access_url": f"{request_origin(request)}/files/{key}"})

    async def multipart_create(request: Request) -> Response:
        if (denied := check_token(core.files, request)) is not None:
            return denied
        mime = request.headers.get("content-type") or "application/octet-stream"
        key, upload_id = core.files.multipart_create(request.headers.get("x-fal-file-name"), mime)
        return json_response({"access_url": f"{request_origin(request)}/files/{key}", "uploadId": upload_id})

    async def multipart_part(request: Request) -> Response:
        if (denied := check_token(core.files, request)) is not None:
            return denied
        params = request.path_params
        key = f"{params['bucket']}/{params['name']}"
        number = params["part_number"]
        try:
            etag = await core.files.multipart_part(key, params["upload_id"], number, request.stream())
        except StorageError as exc:
            return json_response({"detail": str(exc)}, exc.status)
        return json_response({"partNumber": number, "etag": etag}, headers={"ETag": etag})

    async def multipart_complete(request: Request) -> Response:
        if (denied := check_token(core.files, request)) is not None:
            return denied
        params = request.path_params
        key = f"{params['bucket']}/{params['name']}"
        body, errors = parse_body(await request.body())
        if errors is not None or not isinstance(body, dict):
            return json_response({"detail": 'expected a JSON body {"parts": [...]}'}, 400)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                None, core.files.multipart_complete, key, params["upload_id"], body.get("parts")
            )
        except StorageError as exc:
            return json_response({"detail": str(exc)}, exc.status)
        return json_response({"access_url": f"{request_origin(request)}/files/{key}"})

    async def initiate(request: Request) -> Response:
        if (denied := check_key(core.config, request)) is not None:
            return denied
        storage_type = request.query_params.get("storage_type", "gcs")
        if storage_type not in ("gcs", "fal-cdn-v3"):
            return json_response({"detail": f"Unsupported storage type {storage_type!r}"}, 400)
        body, errors = parse_body(await request.body())
        if errors is not None or not isinstance(body, dict):
            return json_response({"detail": 'expected a JSON body {"file_name", "content_type"}'}, 422)
        mime = str(body.get("content_type") or "application/octet-stream")
        key, upload_id, signature = core.files.signed_create(body.get("file_name"), mime)
        origin = request_origin(request)
        return json_response(
            {
                "upload_url": f"{origin}/storage/upload/signed/{upload_id}?signature={signature}",
                "file_url": f"{origin}/files/{key}",
            }
        )

    async def signed_put(request: Request) -> Response:
        try:
            await core.files.signed_put(
                request.path_params["upload_id"],
                request.query_params.get("signature", ""),
                request.stream(),
                request.headers.get("content-type"),
            )
        except StorageError as exc:
            return Response(str(exc), exc.status, media_type="text/plain")
        return Response(status_code=200)

    async def file(request: Request) -> Response:
        key = request.path_params["path"]
        stored = core.files.get(key)
        if stored is None and (rendering := core.pending_files.get(key)) is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(rendering)
            stored = core.files.get(key)
        if stored is None:
            return JSONResponse({"detail": "Not Found"}, 404)
        return FileResponse(stored.path, media_type=stored.content_type)

    return [
        Route("/storage/auth/token", with_faults(core, "token", token), methods=["POST"]),
        Route("/storage/upload/initiate", with_faults(core, "initiate", initiate), methods=["POST"]),
        Route(
            "/storage/upload/signed/{upload_id}", with_faults(core, "signed_put", signed_put), methods=["PUT"]
        ),
        Route("/files/upload", with_faults(core, "upload", upload), methods=["POST"]),
        Route(
            "/files/upload/multipart",
            with_faults(core, "multipart_create", multipart_create),
            methods=["POST"],
        ),
        Route(
            "/files/{bucket}/{name}/multipart/{upload_id}/complete",
            with_faults(core, "multipart_complete", multipart_complete),
            methods=["POST"],
        ),
        Route(
            "/files/{bucket}/{name}/multipart/{upload_id}/{part_number:int}",
            with_faults(core, "multipart_part", multipart_part),
            methods=["PUT"],
        ),
        Route("/files/{path:path}", with_faults(core, "file", file), methods=["GET", "HEAD"]),
    ]
