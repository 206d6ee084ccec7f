"""Downloads of local-storage files under expiring signed URLs (S3 deployments hand out presigned URLs instead)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.api.deps import ServicesDep
from service.api.errors import ApiError, not_found
from service.api.routes.responses import ERRORS
from service.storage import LocalStorage, ObjectNotFound

router = APIRouter()


@router.get("/v1/files/{key:path}", responses=ERRORS, summary="Download a file (local storage)", tags=["files"])
def get_file(
    key: str, services: ServicesDep, expires: Annotated[int, Query()], signature: Annotated[str, Query()]
) -> Response:
    storage = services.jobs.storage
    if not isinstance(storage, LocalStorage):
        raise not_found("file")
    if not storage.verify(key, expires, signature):
        raise ApiError(403, "invalid_signature", "the download URL is invalid or has expired")
    try:
        data = storage.get(key)
    except ObjectNotFound as exc:
        raise not_found("file") from exc
    return Response(data, media_type=_media_type(key))


def _media_type(key: str) -> str:
    suffix = key.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "mp4": "video/mp4", "jpg": "image/jpeg", "webp": "image/webp"}.get(
        suffix, "application/octet-stream"
    )
