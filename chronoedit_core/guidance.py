"""Classifier-free guidance as a seam of the denoising loop: the runner asks a guidance executor for each step's
noise prediction and hands it a function that runs one transformer pass (`cond` or `uncond`).

- `SequentialGuidance` runs both passes in this process, one after the other (what the stock pipeline does).
- `SplitGuidance` runs them at once on two ranks (or on two rank groups of a sequence-parallel mesh): each rank runs
  one pass and the two exchange their predictions, one latent-sized tensor per step. Both sides then combine them
  with the same expression in the same order, so every rank holds the same `noise_pred` and takes the same
  scheduler step, and the result equals `SequentialGuidance`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import torch
import torch.distributed as dist

Branch = Literal["cond", "uncond"]
BRANCHES: tuple[Branch, Branch] = ("cond", "uncond")

Predict = Callable[[Branch], torch.Tensor]
"""Runs one transformer pass of the current step: with the prompt (`cond`) or the negative prompt (`uncond`)."""


class GuidanceExecutor(Protocol):
    def noise_pred(self, predict: Predict, guidance_scale: float) -> torch.Tensor:
        """The step's noise prediction; guidance applies when `guidance_scale` > 1."""
        ...


def combine(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The stock pipeline's guidance formula, operand for operand (the same float rounding)."""
    return uncond + guidance_scale * (cond - uncond)


class SequentialGuidance:
    """Both passes in this process, conditional first."""

    def noise_pred(self, predict: Predict, guidance_scale: float) -> torch.Tensor:
        cond = predict("cond")
        if guidance_scale <= 1:
            return cond
        return combine(cond, predict("uncond"), guidance_scale)


class SplitGuidance:
    """One pass per rank of a two-rank guidance group: index 0 runs `cond`, index 1 `uncond`; an all-gather swaps
    the predictions. Without guidance there is nothing to split: every rank runs the conditional pass (no faster than
    one GPU; a layout for guidance-1 jobs splits the sequence instead)."""

    def __init__(self, group: dist.ProcessGroup, index: int) -> None:
        if dist.get_world_size(group) != 2:
            raise ValueError(f"a guidance group has 2 ranks, not {dist.get_world_size(group)}")
        self.group, self.branch = group, BRANCHES[index]

    def noise_pred(self, predict: Predict, guidance_scale: float) -> torch.Tensor:
        if guidance_scale <= 1:
            return predict("cond")
        mine = predict(self.branch).contiguous()
        both = [torch.empty_like(mine), torch.empty_like(mine)]
        dist.all_gather(both, mine, group=self.group)
        cond, uncond = both
        return combine(cond, uncond, guidance_scale)
