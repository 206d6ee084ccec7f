"""Errors raised by chronoedit_core. Each carries a stable machine-readable `code`; the API maps them to HTTP
statuses in one place (`service/api/errors.py`) and the worker records them on failed jobs.
"""

from __future__ import annotations


class ChronoEditError(Exception):
    """Base class. `code` is stable and documented; `message` is for people."""

    code = "chronoedit_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidImageError(ChronoEditError):
    """The bytes are not a decodable image (not an image at all, or truncated)."""

    code = "invalid_image"


class UnsupportedImageFormatError(ChronoEditError):
    """A real image, but in a format the service does not accept."""

    code = "unsupported_image_format"


class ImageTooLargeError(ChronoEditError):
    """Above the byte or pixel limit (decompression bombs included)."""

    code = "image_too_large"


class ModelLoadError(ChronoEditError):
    """The checkpoint folder is missing, incomplete or not in diffusers layout."""

    code = "model_load_failed"
