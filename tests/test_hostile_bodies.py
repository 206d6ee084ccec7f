"""Hostile bodies and images through the real API: huge bodies are refused while they stream in (the API's memory
stays flat), and the image forms attackers and careless clients send are handled: decompression bombs in JPEG as
well as PNG, polyglots, CMYK, 16-bit and palette images, EXIF rotation, NUL bytes in prompts."""

from __future__ import annotations

import contextlib
import io
import select
import socket
import struct

import httpx
import psutil
import pytest
from PIL import Image

from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

SMALL = {"num_inference_steps": "1", "width": "32", "height": "32"}


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) claims another size: a JPEG decompression bomb's first read."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), (90, 90, 90)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def exif_rotated() -> bytes:
    """A 48x32 landscape JPEG whose EXIF says to rotate it 90 degrees: it is a 32x48 portrait."""
    image = Image.open(io.BytesIO(sample_image(48, 32, fmt="JPEG")))
    exif = image.getexif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", exif=exif)


def submit(client: httpx.Client, data: bytes, **fields: str) -> httpx.Response:
    image = {"image": ("x", data, "application/octet-stream")}
    return client.post("/v1/edits", files=image, data={"prompt": "x", **fields})


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [
        ("cmyk_jpeg", encoded(Image.new("CMYK", (40, 32), (0, 80, 80, 0)), "JPEG"), (40, 32)),
        ("16_bit_png", encoded(Image.new("I;16", (40, 32), 40000), "PNG"), (40, 32)),
        ("palette_png", encoded(Image.new("RGB", (40, 32), (200, 10, 10)).convert("P"), "PNG"), (40, 32)),
        ("exif_rotated_jpeg", exif_rotated(), (32, 48)),
        ("png_with_a_trailing_html_payload", sample_image(40, 32) + b"<html><script>1</script></html>", (40, 32)),
    ],
)  # fmt: skip
def test_unusual_images_are_read_as_images(client: httpx.Client, name: str, data: bytes, size: tuple[int, int]) -> None:
    response = submit(client, data, **SMALL)
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert (job["input"]["width"], job["input"]["height"]) == size, "EXIF orientation applied, sizes as decoded"
    output = httpx.get(job["outputs"]["image"]["url"]).content
    assert output.startswith(b"\x89PNG") and b"<script>" not in output, "outputs are re-encoded images"


def test_a_jpeg_decompression_bomb_is_refused_before_decoding(client: httpx.Client) -> None:
    response = submit(client, jpeg_declaring(40000, 40000))
    assert response.status_code == 413 and response.json()["error"]["code"] == "image_too_large", response.text


def test_nul_bytes_and_huge_prompts(client: httpx.Client) -> None:
    image = {"image": ("x", sample_image(), "image/png")}
    accepted = client.post("/v1/edits", data={"prompt": "make it\x00 red", **SMALL}, files=image)
    assert accepted.status_code == 202, accepted.text
    assert wait_job(client, accepted.json()["id"])["params"]["prompt"] == "make it\x00 red", "kept as sent"
    huge = client.post("/v1/edits", json={"prompt": "x" * 100_000, "image_base64": "AAAA"})
    assert huge.status_code == 422 and huge.json()["error"]["code"] == "invalid_prompt"


def api_memory(stack: Stack) -> int:
    assert stack.api is not None
    return int(psutil.Process(stack.api.pid).memory_info().rss)


def stream_until_refused(base_url: str, total: int, chunk: int = 1 << 20) -> tuple[int, bytes]:
    """Send a chunked multipart body of `total` bytes on a raw socket, stopping once the server answers; returns
    how many bytes were sent and the answer."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    boundary = "x" * 16
    head = (
        f"POST /v1/edits HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    )
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'.encode()
    sock.sendall(head.encode() + f"{len(part):x}\r\n".encode() + part + b"\r\n")
    sent, answer = 0, b""
    payload = f"{chunk:x}\r\n".encode() + b"\0" * chunk + b"\r\n"
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(payload)  # blocking: a chunk is sent whole or the connection is gone
            sent += chunk
    except OSError:
        pass  # the server answered and closed the connection while we were still sending
    with contextlib.suppress(OSError):
        if select.select([sock], [], [], 10)[0]:
            answer = sock.recv(65536)
    sock.close()
    return sent, answer


def test_a_huge_body_is_refused_while_it_streams(stack: Stack) -> None:
    before = api_memory(stack)
    sent, answer = stream_until_refused(stack.base_url, total=1 << 30)  # 1 GiB offered
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer
    assert sent < 200 << 20, f"the API read {sent >> 20} MiB before refusing"
    assert api_memory(stack) - before < 64 << 20, "memory stays bounded"
    with stack.client() as client:
        assert client.get("/healthz").status_code == 200, "the API carries on"
