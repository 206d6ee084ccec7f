"""`POST /v1/prompts/enhance`: the enhanced prompt alone, for a client to review before it submits an edit.

The API holds no enhancer: the request goes through the `enhance` queue to an enhancer worker like a job's
enhancement does (`service/enhance/requests.py`), so the API process stays torch-free and the enhancers' capacity is
shared in one place. The API waits up to `CHRONOEDIT_ENHANCE_TIMEOUT_SECONDS` for the answer; with no enhancer
running, or none answering, it says so with 503 `enhancer_unavailable`.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from chronoedit_core.images import ImageLimits, decode_image
from chronoedit_core.presets import preset
from service.api.auth import Principal
from service.api.errors import ApiError, validation_error
from service.api.inputs import decode_base64, fetch_image, read_json_object
from service.api.schemas import PromptEnhanceCreate, PromptEnhancement
from service.api.services import Services
from service.enhance.requests import PromptReply, PromptRequest, PromptRequests
from service.jobs.queue import ENHANCE_PROMPT_TASK, ENHANCE_QUEUE
from service.jobs.registry import ready_enhancers


async def enhance_prompt(request: Request, services: Services, caller: Principal) -> PromptEnhancement:
    body, data = await _read(request, services)
    if data is None and body.image_url is not None:
        data = await fetch_image(str(body.image_url), services.settings)
    elif data is None and body.input_key is not None:
        data = await run_in_threadpool(services.uploads.read, caller.tenant, body.input_key)
    assert data is not None, "_read guarantees one image source"
    limits = ImageLimits(services.settings.max_image_bytes, services.settings.max_image_pixels)
    await run_in_threadpool(decode_image, data, limits)  # a bad image is the client's 4xx, not an enhancer failure
    if not await run_in_threadpool(lambda: ready_enhancers(services.jobs.registry.workers())):
        raise ApiError(503, "enhancer_unavailable", "no prompt enhancer is running; retry later")
    reply = await _ask(
        services,
        PromptRequest(
            id=uuid.uuid4().hex,
            tenant=caller.tenant,
            prompt=body.prompt,
            kind=body.kind,
            image_sha256=hashlib.sha256(data).hexdigest(),
        ),
        data,
    )
    if reply.enhanced_prompt is None:
        raise ApiError(503, "enhancer_unavailable", f"the prompt enhancer failed: {reply.error}")
    return PromptEnhancement(
        prompt=body.prompt,
        enhanced_prompt=reply.enhanced_prompt,
        model_prompt=preset(body.kind).prompt(reply.enhanced_prompt),
        enhancer=reply.enhancer or "",
        shared=reply.shared,
    )


async def _ask(services: Services, prompt: PromptRequest, image: bytes) -> PromptReply:
    """Hand the request to the enhancers and wait for the answer."""
    timeout = services.settings.enhance_timeout_seconds
    requests = PromptRequests(services.jobs.redis, services.settings.key_prefix)
    await run_in_threadpool(requests.put, prompt, image, timeout + 30)
    await run_in_threadpool(services.jobs.celery.send_task, ENHANCE_PROMPT_TASK, [prompt.id], queue=ENHANCE_QUEUE)
    popped = await services.async_redis.blpop([requests.reply_key(prompt.id)], timeout=timeout)
    if popped is None:
        await run_in_threadpool(requests.forget, prompt.id)  # a late enhancer finds nothing to answer
        raise ApiError(503, "enhancer_unavailable", f"no enhanced prompt within {timeout:.0f} s; retry later")
    return PromptRequests.parse_reply(popped[1])  # type: ignore[arg-type]  # bytes: no decode_responses


async def _read(request: Request, services: Services) -> tuple[PromptEnhanceCreate, bytes | None]:
    settings = services.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_image", "the multipart form needs a file field `image`")
        fields = {key: value for key, value in form.multi_items() if key != "image"}
        if any(not isinstance(value, str) for value in fields.values()):
            raise ApiError(422, "invalid_parameter", "only `image` may be a file")
        return _validated(fields, multipart=True), await upload.read(settings.max_image_bytes + 1)
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    body = _validated(await read_json_object(request, settings.max_image_bytes * 4 // 3 + 64 * 1024, "image_too_large"))
    if body.image_base64 is not None:
        return body, decode_base64(body.image_base64, settings.max_image_bytes)
    return body, None


def _validated(fields: dict[str, Any], multipart: bool = False) -> PromptEnhanceCreate:
    try:
        body = PromptEnhanceCreate.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(list(exc.errors())) from exc
    sources = sum(value is not None for value in (body.image_url, body.image_base64, body.input_key))
    if sources != (0 if multipart else 1):
        raise ApiError(
            422,
            "missing_image",
            "give the image once: a file `image`, or one of `image_url`, `image_base64` and `input_key`",
        )
    return body
