"""Direct uploads: a PUT URL for an input image, and (local storage) the route that receives the upload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import Caller, ServicesDep
from service.api.errors import ApiError, not_found
from service.api.idempotency import REPLAY_HEADER, StoredResponse, fingerprint
from service.api.routes.responses import AUTH_ERRORS, ERR, IdempotencyKey
from service.api.schemas import UploadCreated, Uploaded
from service.api.uploads import INPUT_KEY
from service.storage import LocalStorage

router = APIRouter()


@router.post(
    "/v1/uploads",
    status_code=201,
    response_model=UploadCreated,
    responses=AUTH_ERRORS,
    summary="Get a URL to upload an input image directly",
    tags=["uploads"],
)
async def create_upload(caller: Caller, services: ServicesDep, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    async def create() -> StoredResponse:
        input_key, url, expires = await run_in_threadpool(services.uploads.create, caller.tenant)
        body = UploadCreated(input_key=input_key, upload_url=url, expires_at=expires)
        return StoredResponse(201, body.model_dump(mode="json"), {})

    print_ = fingerprint("POST /v1/uploads", {})
    stored, replayed = await services.idempotency.run(caller.tenant, idempotency_key, print_, create)
    return JSONResponse(stored.body, status_code=stored.status, headers={REPLAY_HEADER: "true"} if replayed else {})


@router.put(
    "/v1/uploads/{key:path}",
    response_model=Uploaded,
    responses={403: ERR, 404: ERR, 413: ERR},
    summary="Receive a direct upload (local storage; the signed URL is the credential)",
    tags=["uploads"],
)
async def put_upload(
    key: str,
    request: Request,
    services: ServicesDep,
    expires: Annotated[int, Query()],
    signature: Annotated[str, Query()],
) -> Uploaded:
    storage = services.jobs.storage
    input_key = key.removesuffix("/image")
    if not isinstance(storage, LocalStorage) or not INPUT_KEY.match(input_key) or not key.endswith("/image"):
        raise not_found("upload")
    if not storage.verify("PUT " + key, expires, signature):
        raise ApiError(403, "invalid_signature", "the upload URL is invalid or has expired")
    data = await _read_capped(request, services.settings.max_image_bytes)
    content_type = request.headers.get("content-type", "application/octet-stream")
    await run_in_threadpool(storage.put, key, data, content_type)
    return Uploaded(input_key=input_key, bytes=len(data))


async def _read_capped(request: Request, limit: int) -> bytes:
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise ApiError(413, "image_too_large", f"the upload is above the limit of {limit} bytes")
    return bytes(data)
