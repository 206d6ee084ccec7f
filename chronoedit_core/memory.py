"""Will a job fit on the GPU? An estimate of an edit's peak memory above the resident weights, fitted to the points
measured on an H200 at the real 14B shapes (`bench/results/memory_profile_h200.json`, `bench/memory_profile.py`).

The peak is the float32 VAE's (encoding the condition video, decoding the result) and grows linearly with the output
area: about 21.9 kB per output pixel for 5 frames and 23.0 kB for the 29 of temporal reasoning (within 1% at
640x368, 1280x720 and 1920x1088). 2048x2048 ran out of memory on the 141 GB card; with its margin this estimate
refuses it.
"""

from __future__ import annotations

import torch

from chronoedit_core.errors import ChronoEditError

BYTES_PER_PIXEL = {5: 21_950, 29: 23_000}
MARGIN = 1.20
"""Head-room for the allocator's fragmentation and the CUDA context. At 2048x2048 the decode needed at least 24.5 kB
per pixel (it ran out of memory with 102.9 GB free above the weights), 12% above the linear fit."""


class TooLargeForDevice(ChronoEditError):
    code = "too_large_for_device"


def estimate_bytes(width: int, height: int, frames: int) -> int:
    per_pixel = BYTES_PER_PIXEL[29] if frames > 5 else BYTES_PER_PIXEL[5]
    return int(width * height * per_pixel * MARGIN)


def available_bytes(device: torch.device) -> int:
    """Free device memory plus what torch's allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def require_fit(width: int, height: int, frames: int, available: int) -> None:
    """Refuse, before any GPU work, a job whose estimated peak is above what the device has left."""
    needed = estimate_bytes(width, height, frames)
    if needed > available:
        raise TooLargeForDevice(
            f"a {width}x{height} edit with {frames} frames needs about {needed / 2**30:.1f} GiB of GPU memory "
            f"beyond the model, and this GPU has {available / 2**30:.1f} GiB left; ask for a smaller size"
        )
