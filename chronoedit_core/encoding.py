"""Encoding outputs: the edited image as PNG, the whole trajectory as an H.264 MP4 (PyAV, imported when a video is
encoded: a process that never writes one does not load FFmpeg's libraries)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
from PIL import Image

PNG_COMPRESS_LEVEL = 1
"""zlib's fastest level. Every job encodes its output on the worker while the client waits: synthetic photo-like
1280x720 images took 90 to 140 ms at level 1 against 290 to 485 ms at Pillow's default 6 (one CPU core, Pillow's
zlib-ng), for 15 to 20% more bytes, and the pixels are the same (PNG is lossless). The worker's 1280x720 encode stage
went from 275 to 132 ms (p50, `bench/service_overhead.py`)."""


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_mp4(frames: list[Image.Image], fps: int = 16) -> bytes:
    """H.264 in yuv420p, playable everywhere. Frame sides are multiples of 16, so no padding is needed."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
