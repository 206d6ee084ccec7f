"""Will a job fit on the GPU? The size admission: before any GPU work, a job's peak memory is estimated from its
memory profile's model (`chronoedit_core/profiles.py`) and compared with what the GPU has left above the weights.

Each stage is checked on its own: encoding the prompt (a streamed text encoder), denoising (the float32 VAE encoding
the condition video, the transformer's activations, streamed blocks in flight) and decoding. A stage that does not
fit untiled runs with VAE tiling where the profile allows it; a job no stage plan fits is refused with the largest
size this worker takes at the job's aspect ratio.

The budget is the device's free memory plus what torch's allocator holds unused, within the worker's own cap
(`limit_memory`, torch's per-process memory fraction) when it has one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from chronoedit_core.errors import ChronoEditError
from chronoedit_core.profiles import DECODE, DECODE_TILED, DENOISE, DENOISE_TILED, MARGIN, MemoryProfile, StageModel
from chronoedit_core.sizing import MIN_SIDE, SIZE_MULTIPLE, Size

GiB = 2**30
_limits: dict[int, int] = {}
"""Bytes each device is capped to in this process (torch keeps the fraction but older releases cannot report it)."""


class TooLargeForDevice(ChronoEditError):
    code = "too_large_for_device"


@dataclass(frozen=True)
class Plan:
    """How a job runs on this worker: which VAE stages are tiled to fit."""

    tile_encode: bool = False
    tile_decode: bool = False

    @property
    def tiled(self) -> list[str]:
        return [stage for stage, tiled in (("encode", self.tile_encode), ("decode", self.tile_decode)) if tiled]


def _stages(profile: MemoryProfile) -> list[tuple[str, StageModel, StageModel, int]]:
    """(name, untiled model, tiled model, fixed bytes the profile adds) of each VAE-bound stage."""
    return [("encode", DENOISE, DENOISE_TILED, profile.denoise_extra), ("decode", DECODE, DECODE_TILED, 0)]


def plan(profile: MemoryProfile, width: int, height: int, frames: int, budget: int) -> Plan:
    """The stage plan for a `width` x `height` job with `frames` frames, or `TooLargeForDevice`."""
    area, tiled = width * height, set()
    fits = profile.prompt_bytes * MARGIN <= budget
    for stage, untiled_model, tiled_model, extra in _stages(profile):
        if untiled_model.bytes(area, frames, extra) <= budget:
            continue
        if profile.tiling and tiled_model.bytes(area, frames, extra) <= budget:
            tiled.add(stage)
            continue
        fits = False
    if not fits:
        raise _too_large(profile, width, height, frames, budget)
    return Plan(tile_encode="encode" in tiled, tile_decode="decode" in tiled)


def _too_large(profile: MemoryProfile, width: int, height: int, frames: int, budget: int) -> TooLargeForDevice:
    area = max_area(profile, frames, budget)
    largest = largest_size(width, height, area)
    regime = "with VAE tiling" if profile.tiling else "untiled"
    advice = (
        f"the largest it takes at this aspect ratio is {largest.width}x{largest.height}" if largest else "none fits"
    )
    return TooLargeForDevice(
        f"a {width}x{height} edit with {frames} frames does not fit this worker's GPU: about "
        f"{estimate_bytes(profile, width, height, frames) / GiB:.1f} GiB beyond the model ({regime}) against "
        f"{budget / GiB:.1f} GiB left under memory profile {profile.name!r}; {advice} ({area:,} pixels at most)"
    )


def estimate_bytes(profile: MemoryProfile, width: int, height: int, frames: int) -> int:
    """The peak of the job's largest stage, tiled where the profile tiles (for messages and measurements)."""
    area = width * height
    peaks = [
        (tiled if profile.tiling else untiled).bytes(area, frames, extra)
        for _, untiled, tiled, extra in _stages(profile)
    ]
    return max(*peaks, int(profile.prompt_bytes * MARGIN))


def max_area(profile: MemoryProfile, frames: int, budget: int) -> int:
    """The largest output area (pixels) whose every stage fits `budget`, tiled where the profile allows it."""
    if profile.prompt_bytes * MARGIN > budget:
        return 0
    areas = []
    for _, untiled, tiled, extra in _stages(profile):
        best = untiled.max_area(budget, frames, extra)
        areas.append(max(best, tiled.max_area(budget, frames, extra)) if profile.tiling else best)
    return min(areas)


def largest_size(width: int, height: int, area: int) -> Size | None:
    """The largest size on the 16-pixel grid with the aspect ratio of `width` x `height` and at most `area` pixels."""
    scale = math.sqrt(area / (width * height))
    size = Size(_floor(width * scale), _floor(height * scale))
    return size if min(size.width, size.height) >= MIN_SIDE else None


def _floor(side: float) -> int:
    return int(side) // SIZE_MULTIPLE * SIZE_MULTIPLE


def limit_memory(device: torch.device | str, limit_bytes: int) -> None:
    """Cap what this process's allocator may hold on `device` (`torch.cuda.set_per_process_memory_fraction`), e.g.
    to run a profile meant for a 24 GB card on a larger one, or two workers on one GPU."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total), index)
    _limits[index] = min(limit_bytes, total)


def device_memory(device: torch.device | str) -> int:
    """The memory this process may use on `device`: the GPU's total, or the cap set with `limit_memory`."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _limits.get(index, torch.cuda.get_device_properties(index).total_memory)


def available_bytes(device: torch.device | str) -> int:
    """Free device memory plus what torch's allocator holds but does not use, within this process's cap."""
    device = torch.device(device)
    free, _ = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    available = int(free + torch.cuda.memory_reserved(device) - allocated)
    return max(0, min(available, device_memory(device) - allocated))
