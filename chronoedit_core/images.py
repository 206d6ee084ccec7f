"""Decoding untrusted input images safely. Torch-free: the API validates uploads with the same function the worker
uses to read them back, so whatever the API accepted the worker can decode.

Pillow rules from DESIGN.md: an explicit `formats=` list, `DecompressionBombWarning` treated as an error, a pixel
limit checked from the header before decoding, EXIF orientation applied, modes normalised to RGB, the first frame of
animations.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from chronoedit_core.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageFormatError

ACCEPTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
"""Formats Pillow may try when opening an input image; anything else is `unsupported_image_format`."""

CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    format: str

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def decode_image(data: bytes, limits: ImageLimits, keep_alpha: bool = False) -> DecodedImage:
    """Decode `data` into an RGB image (RGBA with `keep_alpha`, for overlays), or raise an error whose `code` says
    precisely what is wrong."""
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"the image is {len(data)} bytes, above the limit of {limits.max_bytes} bytes")
    if not data:
        raise InvalidImageError("the image is empty")
    image = _open(data)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} px, above the limit of {limits.max_pixels} px"
        )
    fmt = "JPEG" if image.format == "MPO" else (image.format or "")  # multi-picture JPEGs from phones
    try:
        image.seek(0)  # first frame of an animation
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = image.convert("RGBA") if keep_alpha else _to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's ways of saying "truncated/corrupt"
        raise InvalidImageError(f"the image could not be decoded: {exc}") from exc
    return DecodedImage(image=rgb, format=fmt)


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        if _is_other_image_format(data):
            raise UnsupportedImageFormatError(
                f"this image format is not accepted; send one of {', '.join(ACCEPTED_FORMATS)}"
            ) from exc
        raise InvalidImageError("the data is not an image in any accepted format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"the image could not be read: {exc}") from exc


def _is_other_image_format(data: bytes) -> bool:
    """True when Pillow recognises the bytes as an image in a format outside `ACCEPTED_FORMATS`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as probe:
                return probe.format not in ACCEPTED_FORMATS
    except Exception:
        return False


def _to_rgb(image: Image.Image) -> Image.Image:
    """Normalise any mode to RGB; transparent pixels are composited over white, as product photos expect."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
