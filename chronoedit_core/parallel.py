"""How the ranks of a worker group share one edit: the parallel layout, its device mesh, and applying it to a runner.

A layout has three degrees whose product is the number of ranks:
- `guidance` (1 or 2): the conditional and unconditional passes of each step run on different ranks at once
  (`SplitGuidance`); one latent-sized tensor crosses between them per step.
- `ulysses` and `ring`: the video tokens of every transformer pass are split over ranks by diffusers' declarative
  context parallelism (`ContextParallelConfig`, the transformer's own `_cp_plan`). The 769 text and image context
  tokens are not split (the plan leaves them whole).
The mesh has the dimensions `("guidance", "ring", "ulysses")`; diffusers takes the `ring` and `ulysses` ones from it,
so each guidance branch is a context-parallel group of its own. Every rank runs the same steps on the same latents
(drawn from the same CPU-seeded generator), so all of them end with the same result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers import ContextParallelConfig
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from chronoedit_core.errors import ChronoEditError
from chronoedit_core.guidance import GuidanceExecutor, SequentialGuidance, SplitGuidance
from chronoedit_core.runner import EditRequest

MESH_DIMENSIONS = ("guidance", "ring", "ulysses")
PATCH_PIXELS = 16
"""One video token covers 16x16 output pixels (VAE factor 8, patch 2) of one latent frame."""


class LayoutError(ChronoEditError):
    """A layout that cannot run on these ranks, this model or this device."""

    code = "invalid_layout"


class LayoutUnsupported(ChronoEditError):
    """A job this group's layout cannot run; the job fails with this code, the group carries on."""

    code = "layout_unsupported"


@dataclass(frozen=True)
class ParallelLayout:
    guidance: int = 1
    ulysses: int = 1
    ring: int = 1

    @classmethod
    def for_ranks(cls, ranks: int) -> ParallelLayout:
        """The default: split guidance when the ranks pair up (every temporal-reasoning job is guided), and split
        the sequence over the ranks of each branch."""
        if ranks % 2 == 0:
            return cls(guidance=2, ulysses=ranks // 2)
        return cls(ulysses=ranks)

    @property
    def ranks(self) -> int:
        return self.guidance * self.ulysses * self.ring

    @property
    def sequence_degree(self) -> int:
        """Over how many ranks each pass's video tokens are split."""
        return self.ulysses * self.ring

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def check(self, ranks: int) -> None:
        """Refuse a layout that does not match the group."""
        if min(self.guidance, self.ulysses, self.ring) < 1 or self.guidance > 2:
            raise LayoutError(f"layout {self.as_dict()}: guidance is 1 or 2, ulysses and ring at least 1")
        if self.ranks != ranks:
            raise LayoutError(f"layout {self.as_dict()} needs {self.ranks} ranks; the group has {ranks}")

    def check_request(self, request: EditRequest) -> None:
        """Refuse, before any work, a job this layout cannot split."""
        if self.sequence_degree == 1:
            return
        if request.step_cache_threshold is not None:
            # FirstBlockCache compares the first block's residual, which each rank holds only a slice of here.
            raise LayoutUnsupported("step caching is not available on a worker group that splits the sequence")
        for latent_frames in _latent_frame_counts(request):
            tokens = latent_frames * (request.width // PATCH_PIXELS) * (request.height // PATCH_PIXELS)
            if tokens % self.sequence_degree:
                raise LayoutUnsupported(
                    f"a {request.width}x{request.height} edit has {tokens} video tokens per frame set, which do not "
                    f"split evenly over {self.sequence_degree} ranks; choose a size whose 16-pixel grid has an even "
                    "number of cells"
                )


def _latent_frame_counts(request: EditRequest) -> set[int]:
    """The latent frame counts the transformer sees: 2 for an edit; 8 while reasoning, and 2 once the reasoning
    frames are dropped (when that happens before the last step)."""
    frames = {(request.num_frames - 1) // 4 + 1}
    reasoning_end = request.reasoning_steps if request.reasoning_steps is not None else request.num_inference_steps
    if request.temporal_reasoning and reasoning_end < request.num_inference_steps:
        frames.add(2)
    return frames


def make_mesh(layout: ParallelLayout, device_type: str) -> DeviceMesh:
    """The group's device mesh, `("guidance", "ring", "ulysses")`; every rank must call this, in the same order."""
    return init_device_mesh(device_type, (layout.guidance, layout.ring, layout.ulysses), mesh_dim_names=MESH_DIMENSIONS)


def guidance_executor(layout: ParallelLayout, mesh: DeviceMesh) -> GuidanceExecutor:
    if layout.guidance == 1:
        return SequentialGuidance()
    return SplitGuidance(mesh["guidance"].get_group(), mesh["guidance"].get_local_rank())


def split_sequence(transformer: Any, layout: ParallelLayout, mesh: DeviceMesh) -> None:
    """Apply the layout's context parallelism with diffusers' declarative plan (a no-op without one). Call it after
    the runner is built, so its hooks wrap the compiled blocks from outside."""
    if layout.sequence_degree == 1:
        return
    if torch.accelerator.device_count() == 0:
        # diffusers 0.42.1 places each rank on `rank % torch.accelerator.device_count()`: no accelerator, no
        # context parallelism (the guidance split needs none and runs on CPU ranks).
        raise LayoutError(
            f"layout {layout.as_dict()} splits the sequence, which diffusers' context parallelism supports only on "
            "GPUs; on CPU ranks use {'guidance': 2}"
        )
    heads = transformer.config.num_attention_heads
    if heads % layout.ulysses:
        raise LayoutError(f"Ulysses degree {layout.ulysses} does not divide the model's {heads} attention heads")
    config = ContextParallelConfig(ulysses_degree=layout.ulysses, ring_degree=layout.ring, mesh=mesh)
    transformer.enable_parallelism(config=config)
