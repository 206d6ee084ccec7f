"""Reading `POST /v1/edits`: a multipart form (file `image` + fields) or a JSON body (`image_url` or
`image_base64`). Returns the validated fields and the raw image bytes; decoding happens in the caller.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.api.errors import ApiError, validation_error
from service.api.schemas import EditCreate
from service.netguard import AddressForbidden, UnresolvableHost, check_public_host, pinned
from service.settings import ApiSettings

LIST_FIELDS = {"outputs", "webhook_events"}


async def read_edit_request(request: Request, settings: ApiSettings) -> tuple[EditCreate, bytes | None]:
    """The validated fields and the image bytes sent in the body; None when the image is named by `image_url` or
    `input_key` (fetched later, after the idempotency check)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request, settings)
    if content_type == "application/json":
        return await _read_json(request, settings)
    raise ApiError(415, "unsupported_media_type", "send multipart/form-data (with an `image` file) or application/json")


def _validate(fields: dict[str, Any]) -> EditCreate:
    try:
        return EditCreate.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(list(exc.errors())) from exc


async def _read_multipart(request: Request, settings: ApiSettings) -> tuple[EditCreate, bytes]:
    form = await request.form(max_files=2, max_fields=32)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "missing_image", "the multipart form needs a file field `image`")
    data = await upload.read(settings.max_image_bytes + 1)
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key == "image":
            continue
        if key == "sketch" and isinstance(value, UploadFile):  # the sketch overlay travels as the JSON field does
            fields["sketch_base64"] = base64.b64encode(await value.read(settings.max_image_bytes + 1)).decode()
            continue
        if isinstance(value, UploadFile):
            raise ApiError(422, "invalid_parameter", f"`{key}` must be a plain form field, not a file")
        if key in LIST_FIELDS:
            fields.setdefault(key, []).append(value)
        elif key in fields:
            raise ApiError(422, "invalid_parameter", f"`{key}` is given more than once")
        else:
            fields[key] = value
    if "image_url" in fields or "image_base64" in fields or "input_key" in fields:
        raise ApiError(422, "invalid_parameter", "a multipart request sends the image as the `image` file only")
    return _validate(fields), data


async def read_json_object(request: Request, limit: int, too_large: str = "payload_too_large") -> dict[str, Any]:
    """The request's JSON object body, refused above `limit` bytes (413 `too_large`), also when it comes chunked."""
    if int(request.headers.get("content-length") or 0) > limit:
        raise ApiError(413, too_large, f"the request body is above the limit of {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw.extend(chunk)
        if len(raw) > limit:
            raise ApiError(413, too_large, f"the request body is above the limit of {limit} bytes")
    try:
        body = json.loads(bytes(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # the parser recurses per level; thousands of `[` exhaust the stack
        raise ApiError(400, "invalid_json", "the body nests arrays or objects too deeply") from exc
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_parameter", "the JSON body must be an object")
    return body


async def _read_json(request: Request, settings: ApiSettings) -> tuple[EditCreate, bytes | None]:
    body = await read_json_object(request, settings.max_image_bytes * 4 // 3 + 64 * 1024, "image_too_large")
    edit = _validate(body)
    if sum(field is not None for field in (edit.image_url, edit.image_base64, edit.input_key)) != 1:
        raise ApiError(422, "missing_image", "give exactly one of `image_url`, `image_base64` and `input_key`")
    if edit.image_base64 is not None:
        return edit, decode_base64(edit.image_base64, settings.max_image_bytes)
    return edit, None


def decode_base64(text: str, max_bytes: int, field: str = "image_base64") -> bytes:
    if "," in text[:100] and text.startswith("data:"):
        text = text.split(",", 1)[1]  # accept data URLs
    if len(text) > max_bytes * 4 // 3 + 4:
        raise ApiError(413, "image_too_large", f"the image is above the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "invalid_image", f"`{field}` is not valid base64") from exc


async def fetch_image(url: str, settings: ApiSettings) -> bytes:
    """GET `url` with a byte cap and a timeout, refusing private/loopback targets unless allow-listed.

    Redirects are not followed (each hop would need the same address check), and the connection goes to the
    address that was checked (`service/netguard.py`).
    """
    host = urlsplit(url).hostname or ""
    address = await run_in_threadpool(_check_public, host, settings.fetch_allow_hosts)  # DNS off the event loop
    target = pinned(url, address)
    limit = settings.max_image_bytes
    try:
        async with (
            httpx.AsyncClient(timeout=settings.fetch_timeout_seconds, follow_redirects=False) as client,
            client.stream("GET", target.url, headers=target.headers, extensions=target.extensions) as response,
        ):
            if response.status_code != 200:
                raise ApiError(400, "image_fetch_failed", f"GET {url} answered {response.status_code}")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data.extend(chunk)
                if len(data) > limit:
                    raise ApiError(413, "image_too_large", f"the image is above the limit of {limit} bytes")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise ApiError(400, "image_fetch_failed", f"GET {url} failed: {exc.__class__.__name__}") from exc


def _check_public(host: str, allow_hosts: list[str]) -> str:
    try:
        return check_public_host(host, allow_hosts)
    except UnresolvableHost as exc:
        raise ApiError(400, "image_fetch_failed", str(exc)) from exc
    except AddressForbidden as exc:
        raise ApiError(400, "image_url_forbidden", f"{exc}; not fetched") from exc
