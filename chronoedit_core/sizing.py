"""The size rule of the official ChronoEdit scripts, shared by the API (to record and validate the output size at
submit time) and the worker (to resize the input). Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TARGET_AREA = 720 * 1280
"""Pixel area the official scripts aim for: 921,600 px."""

SIZE_MULTIPLE = 16
"""Every side is a multiple of 16: the VAE downsamples by 8 and the transformer patches by 2."""

MIN_SIDE = 16


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    @property
    def area(self) -> int:
        return self.width * self.height


def default_output_size(
    input_width: int, input_height: int, target_area: int = TARGET_AREA, max_side: int | None = None
) -> Size:
    """Keep the aspect ratio, aim for `target_area` pixels, floor each side to a multiple of 16.

    Same arithmetic as the official example (`round(sqrt(area * aspect)) // 16 * 16`). Two guards the example lacks:
    a floor of 16 px, and, for very elongated images, a scale-down so the long side stays within `max_side`.
    """
    if input_width <= 0 or input_height <= 0:
        raise ValueError(f"image sides must be positive, got {input_width}x{input_height}")
    aspect = input_height / input_width
    height = math.sqrt(target_area * aspect)
    width = math.sqrt(target_area / aspect)
    if max_side is not None and max(width, height) > max_side:
        shrink = max_side / max(width, height)
        width, height = width * shrink, height * shrink
    return Size(width=_floor_to_multiple(width), height=_floor_to_multiple(height))


def _floor_to_multiple(side: float) -> int:
    return max(round(side) // SIZE_MULTIPLE * SIZE_MULTIPLE, MIN_SIDE)


def check_output_size(width: int, height: int, max_side: int, max_area: int) -> None:
    """Raise `ValueError` with a teaching message when an explicit output size is not allowed."""
    for name, value in (("width", width), ("height", height)):
        if value % SIZE_MULTIPLE != 0:
            raise ValueError(f"`{name}` has to be a multiple of {SIZE_MULTIPLE} but is {value}.")
        if not MIN_SIDE <= value <= max_side:
            raise ValueError(f"`{name}` has to be between {MIN_SIDE} and {max_side} but is {value}.")
    if width * height > max_area:
        raise ValueError(f"`width` x `height` is {width * height} px, above the limit of {max_area} px.")
