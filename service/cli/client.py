"""A small client of the public HTTP API for the client commands (`chronoedit batch ...`, `chronoedit edit`).

It knows nothing of the service's internals, so the commands work against any deployment: the API's address comes
from `CHRONOEDIT_URL` (default `http://127.0.0.1:8000`) and the key from `CHRONOEDIT_API_KEY`. Answers of 429 and
503 are retried after their `Retry-After` (tenacity), other errors raise `ApiFailure` with the API's error code.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_URL = "http://127.0.0.1:8000"


class ApiFailure(Exception):
    """The API answered with an error; `code` is its stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Busy(ApiFailure):
    """A 429 or 5xx answer worth retrying after `retry_after` seconds."""

    def __init__(self, status: int, code: str, message: str, retry_after: float) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after


def _wait(state: Any) -> float:
    """Wait what the server asked for (`Retry-After`), else back off exponentially."""
    error = state.outcome.exception()
    if isinstance(error, Busy) and error.retry_after > 0:
        return min(error.retry_after, 60.0)
    return float(wait_exponential(multiplier=0.5, max=10)(state))


class ApiClient:
    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("CHRONOEDIT_URL") or DEFAULT_URL).rstrip("/")
        key = key or os.environ.get("CHRONOEDIT_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    @retry(retry=retry_if_exception_type(Busy), wait=_wait, stop=stop_after_attempt(8), reraise=True)
    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; the answer when 2xx, else `ApiFailure` (retried while the server is busy)."""
        response = self.http.request(method, path, **kwargs)
        if response.is_success:
            return response
        raise _failure(response)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON. A POST carries a fresh `Idempotency-Key`, the same on every retry, so a request whose
        answer was lost (a proxy's 502 after the API acted) is not carried out twice."""
        if method == "POST":
            kwargs["headers"] = {"Idempotency-Key": uuid.uuid4().hex, **kwargs.get("headers", {})}
        return self.call(method, path, **kwargs).json()

    def upload(self, data: bytes, content_type: str) -> str:
        """Store an input image with a direct upload; returns its `input_key`."""
        upload = self.json("POST", "/v1/uploads")
        url = upload["upload_url"]
        self._put(url if url.startswith("http") else f"{self.url}{url}", data, content_type)
        return str(upload["input_key"])

    @retry(retry=retry_if_exception_type(Busy), wait=_wait, stop=stop_after_attempt(8), reraise=True)
    def _put(self, url: str, data: bytes, content_type: str) -> None:
        response = httpx.put(url, content=data, headers={"Content-Type": content_type}, timeout=self.http.timeout)
        if not response.is_success:
            raise _failure(response)

    def download(self, url: str) -> bytes:
        """The bytes of an output URL (a presigned S3 URL, or a signed path below the API)."""
        target = url if url.startswith("http") else f"{self.url}{url}"
        response = httpx.get(target, timeout=self.http.timeout)
        if not response.is_success:
            raise _failure(response)
        return response.content

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """A job's server-sent events (type, job) until it finishes."""
        with connect_sse(self.http, "GET", f"/v1/edits/{job_id}/events", timeout=None) as source:
            if not source.response.is_success:
                source.response.read()
                raise _failure(source.response)
            for event in source.iter_sse():
                yield event.event, event.json()

    def pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every entry of a cursor-paged list."""
        cursor = None
        while True:
            page = self.json("GET", path, params={**params, **({"cursor": cursor} if cursor else {})})
            yield from page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return


def _failure(response: httpx.Response) -> ApiFailure:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:300]
    if response.status_code in RETRY_STATUSES:
        return Busy(response.status_code, code, message, float(response.headers.get("Retry-After") or 0))
    return ApiFailure(response.status_code, code, message)
