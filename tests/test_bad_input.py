"""Bad input gets a 4xx with a precise code, the error envelope, and nothing is stored or enqueued."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import pytest
import redis
from PIL import Image

from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge size: what a decompression bomb looks like to the first read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def ico_image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buffer, format="ICO")
    return buffer.getvalue()


GOOD = sample_image(64, 48)

BAD_FILES = [
    ("not_an_image", b"hello, this is text", 400, "invalid_image"),
    ("empty", b"", 400, "invalid_image"),
    ("truncated", GOOD[: len(GOOD) // 2], 400, "invalid_image"),
    ("unsupported_format", ico_image(), 415, "unsupported_image_format"),
    ("too_many_bytes", b"\x89PNG" + b"\0" * (2 * 1024 * 1024 + 10), 413, "image_too_large"),
    ("too_many_pixels", png_header_only(3000, 2000), 413, "image_too_large"),
    ("decompression_bomb", png_header_only(40000, 40000), 413, "image_too_large"),
]


def job_count(stack: Stack) -> int:
    client = redis.Redis.from_url(stack.env["CHRONOEDIT_REDIS_URL"])
    return len(list(client.scan_iter(match=f"{stack.env['CHRONOEDIT_KEY_PREFIX']}:job:*")))


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(("name", "data", "status", "code"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_image_files(client: httpx.Client, stack: Stack, name: str, data: bytes, status: int, code: str) -> None:
    before = job_count(stack)
    response = client.post("/v1/edits", files={"image": ("x.png", data, "image/png")}, data={"prompt": "x"})
    assert_error(response, status, code)
    assert job_count(stack) == before, "a refused request creates no job"


BAD_FIELDS = [
    ({"prompt": ""}, "invalid_prompt"),
    ({"prompt": "   "}, "invalid_prompt"),
    ({"prompt": "x" * 4001}, "invalid_prompt"),
    ({"negative_prompt": "x" * 4001}, "invalid_prompt"),
    ({"num_inference_steps": "0"}, "invalid_parameter"),
    ({"num_inference_steps": "1000"}, "invalid_parameter"),
    ({"num_inference_steps": "many"}, "invalid_parameter"),
    ({"guidance_scale": "50"}, "invalid_parameter"),
    ({"flow_shift": "0"}, "invalid_parameter"),
    ({"seed": "-1"}, "invalid_parameter"),
    ({"width": "100", "height": "64"}, "invalid_size"),
    ({"width": "8192", "height": "64"}, "invalid_size"),
    ({"width": "4096", "height": "4096"}, "invalid_size"),
    ({"width": "64"}, "invalid_size"),
    ({"outputs": "gif"}, "invalid_parameter"),
    ({"outputs": '["image", "image"]'}, "invalid_parameter"),
    ({"kind": "upscale-everything"}, "invalid_parameter"),
    ({"colour": "red"}, "invalid_parameter"),
]


@pytest.mark.parametrize(("fields", "code"), BAD_FIELDS, ids=[str(f) for f, _ in BAD_FIELDS])
def test_bad_fields(client: httpx.Client, stack: Stack, fields: dict, code: str) -> None:
    before = job_count(stack)
    data = {"prompt": "make it red", **fields}
    response = client.post("/v1/edits", files={"image": ("x.png", GOOD, "image/png")}, data=data)
    assert_error(response, 422, code)
    assert job_count(stack) == before


def test_missing_prompt_and_image(client: httpx.Client) -> None:
    response = client.post("/v1/edits", files={"image": ("x.png", GOOD, "image/png")})
    assert_error(response, 422, "invalid_prompt")
    response = client.post("/v1/edits", files={"other": ("x.png", GOOD, "image/png")}, data={"prompt": "x"})
    assert_error(response, 422, "missing_image")


def test_bad_json_bodies(client: httpx.Client) -> None:
    image = base64.b64encode(GOOD).decode()
    assert_error(
        client.post("/v1/edits", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    assert_error(client.post("/v1/edits", json=["a list"]), 422, "invalid_parameter")
    assert_error(client.post("/v1/edits", json={"prompt": "x"}), 422, "missing_image")
    both = {"prompt": "x", "image_base64": image, "image_url": "https://example.com/a.png"}
    assert_error(client.post("/v1/edits", json=both), 422, "missing_image")
    assert_error(client.post("/v1/edits", json={"prompt": "x", "image_base64": "!!!"}), 422, "invalid_image")
    assert_error(
        client.post("/v1/edits", json={"prompt": "x", "image_url": "ftp://example.com/a.png"}), 422, "invalid_image_url"
    )
    private = {"prompt": "x", "image_url": "http://10.1.2.3/a.png"}
    assert_error(client.post("/v1/edits", json=private), 400, "image_url_forbidden")
    metadata = {"prompt": "x", "image_url": "http://169.254.169.254/latest/meta-data"}
    assert_error(client.post("/v1/edits", json=metadata), 400, "image_url_forbidden")
    assert_error(
        client.post("/v1/edits", content=b"prompt=x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )


def test_unknown_job_and_route(client: httpx.Client) -> None:
    assert_error(client.get("/v1/edits/does-not-exist"), 404, "not_found")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.delete("/healthz"), 405, "method_not_allowed")


def test_tampered_or_expired_download_url(client: httpx.Client) -> None:
    assert_error(
        client.get("/v1/files/jobs/x/input/image.png", params={"expires": 1, "signature": "0" * 64}), 404, "not_found"
    )  # S3 mode: the API serves no files, URLs are presigned S3 URLs


def test_service_still_works_after_bad_input(client: httpx.Client) -> None:
    for _, data, _, _ in BAD_FILES:
        client.post("/v1/edits", files={"image": ("x.png", data, "image/png")}, data={"prompt": "x"})
    job = client.post(
        "/v1/edits",
        files={"image": ("x.png", GOOD, "image/png")},
        data={"prompt": "x", "num_inference_steps": "1", "width": "32", "height": "32"},
    ).json()
    assert wait_job(client, job["id"])["status"] == "succeeded"
