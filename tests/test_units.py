"""Torch-free building blocks: the size rule, image decoding, local storage URLs."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from chronoedit_core.encoding import encode_png
from chronoedit_core.errors import ImageTooLargeError, InvalidImageError
from chronoedit_core.images import ImageLimits, decode_image
from chronoedit_core.sizing import check_output_size, default_output_size
from service.storage import LocalStorage, ObjectNotFound

LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=10_000_000)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1280, 720), (1280, 720)),
        ((720, 1280), (720, 1280)),
        ((1024, 1024), (960, 960)),
        ((1024, 768), (1104, 816)),
        ((3000, 100), (5248, 160)),
        ((100, 3000), (160, 5248)),
    ],
)
def test_size_rule(size: tuple[int, int], expected: tuple[int, int]) -> None:
    result = default_output_size(*size)
    assert (result.width, result.height) == expected
    assert result.width % 16 == 0 and result.height % 16 == 0


def test_size_rule_keeps_elongated_images_within_the_side_limit() -> None:
    result = default_output_size(3000, 100, max_side=2048)
    assert (result.width, result.height) == (2048, 64)


def test_explicit_size_checks_teach() -> None:
    with pytest.raises(ValueError, match="multiple of 16 but is 721"):
        check_output_size(721, 1280, max_side=2048, max_area=4_000_000)
    with pytest.raises(ValueError, match="between 16 and 2048"):
        check_output_size(4096, 16, max_side=2048, max_area=100_000_000)
    with pytest.raises(ValueError, match="above the limit"):
        check_output_size(2048, 2048, max_side=2048, max_area=1_000_000)


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    decoded = decode_image(encode(image, "JPEG", exif=exif), LIMITS)
    assert decoded.image.size == (20, 40)
    assert decoded.content_type == "image/jpeg"


def test_transparency_composited_on_white_and_modes_normalised() -> None:
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(encode(transparent, "PNG"), LIMITS).image.getpixel((0, 0)) == (255, 255, 255)
    grey = Image.new("L", (8, 8), 77)
    assert decode_image(encode(grey, "PNG"), LIMITS).image.getpixel((0, 0)) == (77, 77, 77)
    sixteen = Image.new("I;16", (8, 8), 1000)
    assert decode_image(encode(sixteen, "PNG"), LIMITS).image.mode == "RGB"


def test_first_frame_of_an_animation() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, LIMITS).image.getpixel((0, 0)) == (255, 0, 0)


def test_limits() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode_image(data, ImageLimits(max_bytes=len(data) - 1, max_pixels=10**6))
    with pytest.raises(ImageTooLargeError):
        decode_image(data, ImageLimits(max_bytes=10**6, max_pixels=9999))
    with pytest.raises(InvalidImageError):
        decode_image(b"GIF89a" + b"\0" * 10, LIMITS)


def test_local_storage_signed_urls(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, b"secret")
    storage.put("jobs/a/out.png", b"data", "image/png")
    assert storage.get("jobs/a/out.png") == b"data"
    url = storage.url("jobs/a/out.png", ttl_seconds=60)
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    expires, signature = int(query["expires"]), query["signature"]
    assert storage.verify("jobs/a/out.png", expires, signature)
    assert not storage.verify("jobs/a/other.png", expires, signature), "a signature is bound to its key"
    assert not storage.verify("jobs/a/out.png", expires + 1, signature), "and to its expiry"
    past = int(time.time()) - 1
    assert not storage.verify("jobs/a/out.png", past, storage.sign("jobs/a/out.png", past)), "expired"
    with pytest.raises(ObjectNotFound):
        storage.get("../escape")
    storage.delete_prefix("jobs/a/")
    with pytest.raises(ObjectNotFound):
        storage.get("jobs/a/out.png")


def test_multi_picture_jpeg_is_a_jpeg() -> None:
    frames = [Image.new("RGB", (16, 16), (200, 10, 10)), Image.new("RGB", (16, 16), (10, 10, 200))]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    decoded = decode_image(data, LIMITS)
    assert decoded.format == "JPEG" and decoded.content_type == "image/jpeg"
    assert decoded.image.getpixel((8, 8))[0] > 150, "the first picture"


def test_png_output_is_lossless_and_compressed_at_zlibs_fastest_level() -> None:
    image = Image.effect_noise((64, 48), 40).convert("RGB")
    data = encode_png(image)
    assert Image.open(io.BytesIO(data)).tobytes() == image.tobytes()
    idat = data.index(b"IDAT") + 4
    assert data[idat + 1] >> 6 == 0, "the zlib header's FLEVEL: 0 is the fastest level (1), 2 Pillow's default (6)"
