"""Response and header documentation shared by the routes (the OpenAPI document lists every status a route answers)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header

from service.api.schemas import ErrorResponse

ERR = {"model": ErrorResponse}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: ERR, 404: ERR, 422: ERR, 429: ERR}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    415: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    429: {"model": ErrorResponse, "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}
"""The error statuses documented on submitting, getting an edit and downloading a file."""

IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description="Replays the first response for the same key and request (kept 24 h).",
    ),
]
