"""A cap on every request body, enforced while it streams in.

Neither Starlette nor uvicorn limits a request body's size, and Starlette parses a whole multipart form (spooling it
to disk) before a route sees it, so a 10 GB upload would be received in full before the route's own limit refused
it. This ASGI middleware counts the bytes as they are received and stops the request at `limit` with
413 `payload_too_large`: at once when `Content-Length` already says more, else as soon as the count passes it. The
cap is the largest body any route takes; routes keep their tighter limits (the image size, the batch size). It sits
inside the HTTP middlewares, so its 413 is raised into the route and answered by the error handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.api.errors import ApiError

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", f"the request body is above the limit of {limit} bytes")


class BodyLimit:
    def __init__(self, app: App, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0

        async def counted() -> Message:
            nonlocal received
            if declared is not None and declared > self.limit:
                raise BodyTooLarge(self.limit)
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def largest_body(max_image_bytes: int, max_batch_bytes: int) -> int:
    """The largest body a route takes: an edit with its image and a sketch overlay, both base64 in JSON (or as
    multipart files), or a batch request."""
    return max(3 * max_image_bytes, max_batch_bytes) + 64 * 1024


def _content_length(scope: MutableMapping[str, Any]) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
