"""The API's error services: every error is `{"error": {"code", "message", "request_id"}}` with a stable `code`.

Exceptions are mapped to HTTP statuses here and nowhere else. Anything unexpected becomes a 500 `internal_error`
carrying the request id, so it can be found in the logs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from chronoedit_core.errors import ChronoEditError, ImageTooLargeError, UnsupportedImageFormatError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client can act on."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} does not exist")


FIELD_CODES = {
    "prompt": "invalid_prompt",
    "negative_prompt": "invalid_prompt",
    "width": "invalid_size",
    "height": "invalid_size",
    "image_url": "invalid_image_url",
    "image_base64": "invalid_image",
    "idempotency-key": "invalid_idempotency_key",
}
"""Validation errors on these fields get a more precise code than the generic `invalid_parameter`."""

STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}

RETRY_AFTER_HEADER = "Retry-After"


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "")


def error_response(request: Request, status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id(request)}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers={"X-Request-ID": request_id(request)})


def validation_error(errors: Sequence[Any]) -> ApiError:
    """Turn pydantic errors into one `ApiError` whose code names the first offending field's kind."""
    details = [
        {"field": ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "header")), "message": err["msg"]}
        for err in errors
    ]
    first = details[0]["field"].split(".")[0] if details else ""
    message = "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in details)
    return ApiError(422, FIELD_CODES.get(first, "invalid_parameter"), message, details)


def allowed_methods(request: Request) -> list[str]:
    """The methods of every route whose path matches the request's (Starlette's 405 names only the first route)."""
    methods: set[str] = set()
    for route in _every_route(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _every_route(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Routes, with those of included routers (FastAPI keeps them nested) in their place."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        yield from _every_route(nested.routes) if nested is not None else (route,)


def core_error_status(exc: ChronoEditError) -> int:
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, UnsupportedImageFormatError):
        return 415
    return 400


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = error_response(request, exc.status, exc.code, exc.message, exc.details)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(ChronoEditError)
    async def _core_error(request: Request, exc: ChronoEditError) -> JSONResponse:
        return error_response(request, core_error_status(exc), exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(list(exc.errors()))
        return error_response(request, err.status, err.code, err.message, err.details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "http_error")
        response = error_response(request, exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110: `Allow` lists every method the path takes, across all its routes
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("request %s: Redis unreachable: %s", request_id(request), exc)
        response = error_response(request, 503, "store_unavailable", "the job store is unreachable; retry shortly")
        response.headers[RETRY_AFTER_HEADER] = "5"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in request %s", request_id(request))
        return error_response(request, 500, "internal_error", "internal error; quote the request id when reporting")


ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_image": (400, "not an image, truncated, empty, or bad base64"),
    "invalid_json": (400, "the JSON body does not parse"),
    "image_fetch_failed": (400, "`image_url` could not be fetched"),
    "image_url_forbidden": (400, "`image_url` resolves to a non-public address"),
    "unauthorized": (401, "no, malformed, unknown or revoked API key"),
    "invalid_signature": (403, "a signed download or upload URL is invalid or expired"),
    "not_found": (404, "unknown job (or another tenant's), delivery or route"),
    "upload_not_found": (404, "unknown or expired `input_key`, or another tenant's"),
    "method_not_allowed": (405, "the route does not take this method"),
    "idempotency_key_in_progress": (409, "a request with this Idempotency-Key is still running; retry"),
    "job_not_finished": (409, "DELETE of a job that is not finished"),
    "job_finished": (409, "cancel of a job that already succeeded or failed"),
    "upload_incomplete": (409, "nothing was uploaded to the `input_key` yet"),
    "delivery_pending": (409, "retry of a delivery that is still being attempted"),
    "batch_closed": (409, "items appended to a closed or canceled batch"),
    "image_too_large": (413, "above the byte or pixel limit"),
    "unsupported_image_format": (415, "an image, but not PNG, JPEG, WebP, GIF, BMP or TIFF"),
    "unsupported_media_type": (415, "neither multipart/form-data nor application/json"),
    "invalid_prompt": (422, "empty, blank or overlong prompt"),
    "invalid_size": (422, "bad width/height"),
    "invalid_parameter": (422, "any other field out of range or unknown"),
    "invalid_image_url": (422, "`image_url` is not an http(s) URL"),
    "missing_image": (422, "not exactly one image source"),
    "reasoning_with_distill": (422, "temporal reasoning asked for in `fast` mode (the distill LoRA)"),
    "mode_unavailable": (422, "mode `turbo` while no ready worker holds a few-step transformer"),
    "invalid_cursor": (422, "a list cursor this API did not return"),
    "too_many_items": (422, "more batch items in one request than the server takes"),
    "invalid_idempotency_key": (422, "Idempotency-Key longer than 255 characters"),
    "idempotency_key_reuse": (422, "the Idempotency-Key was used with a different request"),
    "webhook_url_forbidden": (422, "`webhook` not https, or resolves to a non-public address"),
    "webhook_secret_missing": (422, "a webhook without an API key and without a default secret"),
    "rate_limited": (429, "the key's requests per minute are used up; see Retry-After"),
    "concurrency_limit": (429, "the key has its maximum of unfinished jobs; see Retry-After"),
    "batch_limit": (429, "the tenant has its maximum of batch items waiting; see Retry-After"),
    "payload_too_large": (413, "the request body is too large"),
    "http_error": (400, "any other HTTP-level refusal"),
    "internal_error": (500, "a bug; quote the request id"),
    "storage_unavailable": (503, "object storage failed; retry"),
    "store_unavailable": (503, "the job store (Redis) is unreachable; retry after Retry-After"),
    "enhancer_unavailable": (503, "no prompt enhancer is running, or it failed or did not answer in time"),
}
"""Every stable error `code` with its HTTP status; documented in the OpenAPI document (`ErrorBody.code`)."""
