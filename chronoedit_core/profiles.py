"""Memory profiles: what a worker keeps on its GPU, in which weight format, and how much memory an edit then needs.

A profile is data. Loading (`chronoedit_core/loading.py`) and placement (`chronoedit_core/placement.py`) read it; the
size admission (`chronoedit_core/memory.py`) uses its peak-memory model. Torch-free, so the API side may import it.

| profile | transformer | text encoder | image encoder | VAE tiling | output | picked by `auto` |
|---|---|---|---|---|---|---|
| `resident` | bf16 on the GPU | GPU | GPU | when needed | exact (untiled) | >= 70 GiB |
| `fp8-resident` | FP8 on the GPU | streamed in | GPU | when needed | FP8 deviation | >= 40 GiB, FP8 GPU |
| `lean` | bf16 on the GPU | streamed in | GPU | when needed | exact (untiled) | >= 44 GiB, no FP8 |
| `fp8-offload` | FP8, blocks streamed | streamed in | streamed in | when needed | FP8 deviation | FP8 GPU |
| `offload` | bf16, blocks streamed | streamed in | streamed in | when needed | exact (untiled) | otherwise |

"Streamed in": the weights live in pinned host memory and diffusers' group offloading copies them onto the GPU just
before use, prefetching the next group on a side stream. The VAE (0.5 GB) always stays on the GPU; its activations,
not its weights, are what grows with the image, and tiling bounds them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

GiB = 2**30

MARGIN = 1.20
"""Head-room on every estimate for the allocator's fragmentation. At 2048x2048 on the H200 the untiled decode needed
at least 24.5 kB per pixel (it ran out of memory with 102.9 GB free above the weights), 12% above the linear fit."""

Weights = Literal["bfloat16", "float8"]
Home = Literal["gpu", "streamed"]


@dataclass(frozen=True)
class StageModel:
    """Peak bytes one stage needs above what the worker holds between jobs: a fixed part plus bytes per output pixel,
    by frame count (5 for an edit, 29 for temporal reasoning)."""

    fixed: int
    per_pixel_5: int
    per_pixel_29: int

    def per_pixel(self, frames: int) -> int:
        return self.per_pixel_29 if frames > 5 else self.per_pixel_5

    def bytes(self, area: int, frames: int, extra: int = 0) -> int:
        return int((self.fixed + extra + area * self.per_pixel(frames)) * MARGIN)

    def max_area(self, budget: int, frames: int, extra: int = 0) -> int:
        """The largest output area whose estimate fits `budget` (0 when not even the fixed part fits)."""
        return max(0, math.floor((budget / MARGIN - self.fixed - extra) / self.per_pixel(frames)))


# Measured on one H200 at the real 14B shapes with everything resident (bench/results/memory_profile_h200.json):
# linear in the output area within 1% at 640x368, 1280x720 and 1920x1088. The denoising stage's peak is the float32
# VAE encoding the condition video (the transformer's activations stay below it), the decoding stage's the VAE decode.
DENOISE = StageModel(fixed=0, per_pixel_5=15_700, per_pixel_29=17_600)
DECODE = StageModel(fixed=0, per_pixel_5=21_950, per_pixel_29=23_000)

# Tiled stages, fitted to the H100 runs of bench/memory_profiles.py (bench/results/memory_profiles_h100.json, peaks
# above the idle worker). The VAE works on 256x256-pixel tiles, a working set of about 1.9 GiB for the tiled encode
# and 1.35 GiB for the tiled decode, measured flat from 1280x720 to 2048x1536. What still grows with the area: during
# denoising the transformer's activations (at most about 70 kB per token; a 5-frame edit has one token per 128 output
# pixels, a 29-frame one per 32), during decoding the float32 output frames. Measured tiled peaks: encode 1.99 GiB at
# 1280x720x5, 1.80 at 2048x1536x5, 2.08 at 1280x720x29; decode 1.43, 1.72 and 1.90 GiB.
DENOISE_TILED = StageModel(fixed=int(1.9 * GiB), per_pixel_5=550, per_pixel_29=2_200)
DECODE_TILED = StageModel(fixed=int(1.35 * GiB), per_pixel_5=150, per_pixel_29=700)

TEXT_ENCODER_STREAMED = int(2.5 * GiB)
"""Not yet measured on its own (the prompt was encoded within every measured cap): UMT5-XXL streamed in layer by
layer; its largest group is the 2.1 GB token embedding, plus the next layer prefetched and 512 tokens of
activations."""
BLOCKS_STREAMED = {"bfloat16": int(1.75 * GiB), "float8": int(1.3 * GiB)}
"""Transformer blocks in flight while streamed (the running block and the prefetched next one, 0.81 GB each in bf16,
0.41 GB in FP8 with its float32 scaling), measured as the difference between the streamed and the resident profile at
the same tiled size: 1.64 GiB in bf16 (2048x1536x5 and 1280x720x29 alike), 1.20 GiB in FP8 (2048x1536x5)."""


@dataclass(frozen=True)
class MemoryProfile:
    name: str
    weights: Weights
    """The transformer blocks' linear weights: bf16, or FP8 (e4m3, one scale per output channel) in place of bf16."""
    transformer: Home
    text_encoder: Home
    image_encoder: Home
    output: str
    """What the profile changes in the output, for people."""
    min_gib: float
    """`auto` picks the first profile (in `PROFILES` order) whose `min_gib` the GPU has and whose weights it can run."""
    tiling: bool = True
    """Whether a stage that would not fit untiled runs with VAE tiling (slightly different pixels) instead of being
    refused (every profile does; tests take it off to see the untiled admission)."""

    @property
    def exact(self) -> bool:
        """Whether a job that does not ask for FP8 runs the exact bfloat16 path."""
        return self.weights == "bfloat16"

    @property
    def streams_transformer(self) -> bool:
        return self.transformer == "streamed"

    @property
    def prompt_bytes(self) -> int:
        """Fixed peak of encoding a prompt (nothing beyond the resident weights when the text encoder stays)."""
        return TEXT_ENCODER_STREAMED if self.text_encoder == "streamed" else 0

    @property
    def denoise_extra(self) -> int:
        return BLOCKS_STREAMED[self.weights] if self.streams_transformer else 0


EXACT_UNLESS_TILED = "none, except at sizes that need VAE tiling (slightly different pixels there)"

PROFILES: dict[str, MemoryProfile] = {
    p.name: p
    for p in (
        MemoryProfile(
            name="resident",
            weights="bfloat16",
            transformer="gpu",
            text_encoder="gpu",
            image_encoder="gpu",
            min_gib=70,
            output=EXACT_UNLESS_TILED,
        ),
        MemoryProfile(
            name="fp8-resident",
            weights="float8",
            transformer="gpu",
            text_encoder="streamed",
            image_encoder="gpu",
            min_gib=40,
            output="FP8 weights and matrix multiplies for every job (the opt-in `fp8` deviation); VAE tiling where "
            "needed",
        ),
        MemoryProfile(
            name="lean",
            weights="bfloat16",
            transformer="gpu",
            text_encoder="streamed",
            image_encoder="gpu",
            min_gib=44,
            output=EXACT_UNLESS_TILED,
        ),
        MemoryProfile(
            name="fp8-offload",
            weights="float8",
            transformer="streamed",
            text_encoder="streamed",
            image_encoder="streamed",
            min_gib=0,
            output="FP8 weights and matrix multiplies for every job; VAE tiling where needed",
        ),
        MemoryProfile(
            name="offload",
            weights="bfloat16",
            transformer="streamed",
            text_encoder="streamed",
            image_encoder="streamed",
            min_gib=0,
            output=EXACT_UNLESS_TILED,
        ),
    )
}
AUTO = "auto"
NAMES = (AUTO, *PROFILES)


def pick(total_bytes: int, fp8_capable: bool) -> MemoryProfile:
    """The fastest profile for a GPU of `total_bytes` (or a worker capped to that much): FP8 profiles only where the
    GPU has FP8 tensor cores (compute capability 8.9 and newer: L4, L40S, RTX 4090 / 6000 Ada, H100, H200)."""
    for profile in PROFILES.values():
        if total_bytes >= profile.min_gib * GiB and (fp8_capable or profile.exact):
            return profile
    return PROFILES["offload"]


def profile_named(name: str) -> MemoryProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown memory profile {name!r}; use one of {', '.join(NAMES)}")
    return PROFILES[name]


def prefer_expandable_segments() -> None:
    """Let torch's CUDA allocator grow its segments instead of caching fixed-size blocks. With fixed blocks, the
    changing activation shapes of the memory-saving profiles fragment the cache: measured on an H100 capped to
    44 GiB, an `fp8-resident` edit ran out of memory with 12.6 GiB reserved but unusable
    (`bench/results/memory_profiles_h100.json`). Takes effect only before CUDA is first used (an environment variable,
    so a worker's main process sets it without importing torch); an operator's own `PYTORCH_CUDA_ALLOC_CONF` wins."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
