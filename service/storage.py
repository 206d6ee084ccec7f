"""Object storage for inputs and outputs behind one small interface: S3 (boto3; AWS, MinIO or any S3-compatible
server) or a local folder. Download URLs are presigned GETs in S3 mode and expiring HMAC-signed API paths in local
mode (served by `GET /v1/files/{key}`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import quote, urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.settings import CommonSettings


class StorageError(Exception):
    """The storage backend failed or is unreachable."""


class ObjectNotFound(StorageError):
    pass


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def copy(self, source: str, target: str) -> None:
        """Copy an object inside the store (S3: server-side); raises `ObjectNotFound` when `source` is missing."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...
    def size(self, key: str) -> int:
        """Bytes of `key`; raises `ObjectNotFound`."""
        ...

    def upload_url(self, key: str, ttl_seconds: int) -> str:
        """A URL (S3: presigned PUT) or a path below the API's base URL (local) that stores `key` with a PUT."""
        ...

    def url(self, key: str, ttl_seconds: int) -> str:
        """An absolute URL (S3) or a path below the API's base URL (local) that downloads `key`."""
        ...

    def check(self) -> None:
        """Raise `StorageError` if the backend cannot be used."""
        ...


class LocalStorage:
    def __init__(self, root: Path, signing_secret: bytes) -> None:
        self.root = root.resolve()
        self._secret = signing_secret

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or any(p in ("..", "/", "") for p in parts) or key.startswith("/"):
            raise ObjectNotFound(key)
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)  # readers never see half a file

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def copy(self, source: str, target: str) -> None:
        self.put(target, self.get(source), "application/octet-stream")

    def delete_prefix(self, prefix: str) -> None:
        for path in sorted(self.root.glob(prefix.rstrip("/") + "/**/*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def upload_url(self, key: str, ttl_seconds: int) -> str:
        expires = int(time.time()) + ttl_seconds
        query = urlencode({"expires": expires, "signature": self.sign("PUT " + key, expires)})
        return f"/v1/uploads/{quote(key)}?{query}"

    def url(self, key: str, ttl_seconds: int) -> str:
        expires = int(time.time()) + ttl_seconds
        query = urlencode({"expires": expires, "signature": self.sign(key, expires)})
        return f"/v1/files/{quote(key)}?{query}"

    def sign(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def verify(self, key: str, expires: int, signature: str) -> bool:
        return expires >= time.time() and hmac.compare_digest(self.sign(key, expires), signature)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage folder {self.root} is not usable: {exc}") from exc


class S3Storage:
    def __init__(self, settings: CommonSettings) -> None:
        secret = settings.s3_secret_access_key
        self.bucket = settings.s3_bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            # boto3's standard retry mode: throttling, 5xx and connection errors are retried with jittered exponential
            # backoff (random, under 2^attempt s), 8 attempts in all, before an operation fails (`StorageError`).
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 8},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._call("put_object", Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return self._read("get_object", key)["Body"].read()

    def copy(self, source: str, target: str) -> None:
        self._read("copy_object", target, CopySource={"Bucket": self.bucket, "Key": source})

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                self._call("delete_objects", Bucket=self.bucket, Delete={"Objects": objects})

    def size(self, key: str) -> int:
        return int(self._read("head_object", key)["ContentLength"])

    def _read(self, operation: str, key: str, **kwargs: object) -> dict:
        """An object operation whose missing key is `ObjectNotFound`, every other failure `StorageError`."""
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, Key=key, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectNotFound(key) from exc
            raise StorageError(str(exc)) from exc
        except BotoCoreError as exc:
            raise StorageError(str(exc)) from exc

    def upload_url(self, key: str, ttl_seconds: int) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        return self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=ttl_seconds)

    def url(self, key: str, ttl_seconds: int) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_seconds)

    def check(self) -> None:
        self._call("head_bucket", Bucket=self.bucket)

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call("create_bucket", Bucket=self.bucket)

    def _call(self, operation: str, **kwargs: object) -> dict:
        try:
            return getattr(self.client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"S3 {operation} failed: {exc}") from exc


def make_storage(settings: CommonSettings) -> LocalStorage | S3Storage:
    if settings.storage_backend == "s3":
        storage = S3Storage(settings)
        if settings.s3_create_bucket:
            storage.ensure_bucket()
        return storage
    return LocalStorage(settings.storage_dir, settings.url_signing_secret.get_secret_value().encode())
