"""Direct uploads: `POST /v1/uploads` hands out a PUT URL (presigned S3 PUT, or a signed API path in local mode) and
an `input_key` that `POST /v1/edits` accepts instead of the image, so large images need not pass through the API
on the way in. The upload belongs to the tenant that asked for it; using it validates the stored object with the
same decoder as any other input. Uploads are deleted after the output retention, like job files.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import cast

import redis

from service.api.errors import ApiError
from service.settings import ApiSettings
from service.storage import ObjectNotFound, Storage, StorageError

INPUT_KEY = re.compile(r"^uploads/[0-9a-f]{32}$")


class Uploads:
    def __init__(self, client: redis.Redis, prefix: str, storage: Storage, settings: ApiSettings) -> None:
        self.client = client
        self.prefix = prefix
        self.storage = storage
        self.settings = settings
        self.index = f"{prefix}:uploads"

    @staticmethod
    def storage_key(input_key: str) -> str:
        """Where the upload's bytes are: a folder per upload, so deleting it is `delete_prefix` on every backend."""
        return f"{input_key}/image"

    def _owner(self, input_key: str) -> str:
        return f"{self.prefix}:upload:{input_key}"

    def create(self, tenant: str) -> tuple[str, str, float]:
        """A new upload of `tenant`: its input key, PUT URL and when the URL expires."""
        input_key = f"uploads/{uuid.uuid4().hex}"
        now = time.time()
        with self.client.pipeline() as pipe:
            pipe.set(self._owner(input_key), tenant, ex=self.settings.output_retention_seconds)
            pipe.zadd(self.index, {input_key: now})
            pipe.execute()
        ttl = self.settings.upload_ttl_seconds
        return input_key, self.storage.upload_url(self.storage_key(input_key), ttl), now + ttl

    def read(self, tenant: str, input_key: str) -> bytes:
        """The uploaded bytes, if `input_key` is the tenant's and was uploaded; the caller decodes them."""
        owner = self.client.get(self._owner(input_key)) if INPUT_KEY.match(input_key) else None
        if owner is None or cast(bytes, owner).decode() != tenant:
            raise ApiError(404, "upload_not_found", f"upload {input_key} does not exist (or expired)")
        try:
            size = self.storage.size(self.storage_key(input_key))
            if size > self.settings.max_image_bytes:
                limit = self.settings.max_image_bytes
                raise ApiError(413, "image_too_large", f"the upload is {size} bytes, above the limit of {limit}")
            return self.storage.get(self.storage_key(input_key))
        except ObjectNotFound as exc:
            raise ApiError(409, "upload_incomplete", f"nothing was uploaded to {input_key} yet") from exc
        except StorageError as exc:
            raise ApiError(503, "storage_unavailable", f"reading the upload failed: {exc}") from exc

    def expired(self, before: float) -> list[str]:
        members = cast(list[bytes], self.client.zrangebyscore(self.index, "-inf", before, start=0, num=500))
        return [member.decode() for member in members]

    def forget(self, input_key: str) -> None:
        self.client.zrem(self.index, input_key)
