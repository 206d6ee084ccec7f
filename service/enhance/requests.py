"""`POST /v1/prompts/enhance` through the enhancers: the API stores the request (instruction, kind, image bytes) under
a short TTL and publishes its id to the `enhance` queue; the enhancer that takes it pushes the answer to a reply list
the API blocks on. Nothing outlives the TTL, so an API that gave up leaves nothing behind."""

from __future__ import annotations

import json
from typing import cast

import redis
from pydantic import BaseModel


class PromptRequest(BaseModel):
    id: str
    tenant: str
    prompt: str
    kind: str
    image_sha256: str


class PromptReply(BaseModel):
    enhanced_prompt: str | None = None
    enhancer: str | None = None
    shared: bool = False
    error: str | None = None
    """Why the enhancer failed; `enhanced_prompt` is then None."""


class PromptRequests:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def _key(self, request_id: str) -> str:
        return f"{self.prefix}:prompt:{request_id}"

    def reply_key(self, request_id: str) -> str:
        """The list the answer is pushed to (the API waits on it with BLPOP)."""
        return f"{self.prefix}:prompt:{request_id}:reply"

    def put(self, request: PromptRequest, image: bytes, ttl_seconds: float) -> None:
        key = self._key(request.id)
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping={"request": request.model_dump_json(), "image": image})
            pipe.pexpire(key, int(ttl_seconds * 1000))
            pipe.execute()

    def get(self, request_id: str) -> tuple[PromptRequest, bytes] | None:
        """The request and its image bytes; None once the API stopped waiting (expired or answered)."""
        fields = cast(dict[bytes, bytes], self.client.hgetall(self._key(request_id)))
        if b"request" not in fields:
            return None
        return PromptRequest.model_validate_json(fields[b"request"]), fields[b"image"]

    def answer(self, request_id: str, reply: PromptReply, ttl_seconds: float) -> None:
        key = self.reply_key(request_id)
        with self.client.pipeline() as pipe:
            pipe.rpush(key, reply.model_dump_json())
            pipe.pexpire(key, int(ttl_seconds * 1000))
            pipe.delete(self._key(request_id))
            pipe.execute()

    def forget(self, request_id: str) -> None:
        self.client.delete(self._key(request_id), self.reply_key(request_id))

    @staticmethod
    def parse_reply(raw: bytes) -> PromptReply:
        return PromptReply.model_validate(json.loads(raw))
