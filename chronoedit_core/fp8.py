"""Opt-in FP8 matrix multiplies for the transformer blocks' linear layers (Hopper and newer).

Each `nn.Linear` inside the transformer blocks is wrapped by `Fp8Linear`, which keeps the original bf16 layer and an
FP8 (e4m3) copy of its weight with one scale per output channel. While FP8 is switched on, activations are scaled
per token, cast to FP8 and multiplied with `torch._scaled_mm` (FP8 tensor cores, bf16 output); while it is off the
original layer runs unchanged, so the exact mode stays exact. Switching is per job (`fp8_enabled`), keeping both
copies costs about half the blocks' weight memory again (about 15 GiB for the 14B model).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
ROW_MULTIPLE = 16  # _scaled_mm wants every dimension divisible by 16


class Fp8Linear(nn.Module):
    linear: nn.Linear
    weight_fp8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.enabled = False
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        self.register_buffer("weight_fp8", (weight / scale).to(FP8), persistent=False)
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # [1, out]

    @property
    def weight(self) -> torch.Tensor:
        """The original weight, for code that inspects it (peft's LoRA layers read `base_layer.weight`)."""
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.linear(x)
        rows = x.reshape(-1, x.shape[-1])
        padding = -rows.shape[0] % ROW_MULTIPLE
        if padding:
            rows = nn.functional.pad(rows, (0, 0, 0, padding))
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
        quantized = (rows.float() / scale).to(FP8)
        out = torch._scaled_mm(
            quantized, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=x.dtype
        )
        if padding:
            out = out[: out.shape[0] - padding]
        if self.linear.bias is not None:
            out = out + self.linear.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def wrap_linears(blocks: nn.Module) -> int:
    """Replace every `nn.Linear` under `blocks` whose sides are multiples of 16 by an `Fp8Linear`; returns how many.

    LoRA adapters' own small matrices (peft's `lora_A` / `lora_B`) stay in bf16; the base layer they wrap goes FP8.
    """
    targets = [
        (parent, name, child)
        for path, parent in blocks.named_modules()
        if "lora_" not in path
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0
    ]
    for parent, name, child in targets:
        setattr(parent, name, Fp8Linear(child))
    return len(targets)


@contextmanager
def fp8_enabled(blocks: nn.Module, enabled: bool) -> Iterator[None]:
    layers = [m for m in blocks.modules() if isinstance(m, Fp8Linear)]
    if enabled and not layers:
        raise ValueError("FP8 was asked for, but this worker did not prepare FP8 weights (CHRONOEDIT_FP8)")
    for layer in layers:
        layer.enabled = enabled
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = False
