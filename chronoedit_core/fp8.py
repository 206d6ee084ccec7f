"""FP8 matrix multiplies for the transformer blocks' linear layers (Hopper and Ada GPUs), in two forms.

Each `nn.Linear` inside the transformer blocks becomes an `Fp8Linear` holding an FP8 (e4m3) weight with one scale per
output channel. While FP8 runs, activations are scaled per token, cast to FP8 and multiplied with `torch._scaled_mm`
(FP8 tensor cores, bf16 output).

- Copies (`wrap_linears`, the `CHRONOEDIT_FP8` option of the `resident` profile): the original bf16 layer stays
  beside the FP8 copy and FP8 is switched on per job (`fp8_enabled`), so the exact mode stays exact. Keeping both
  costs about half the blocks' weight memory again (about 15 GiB for the 14B model).
- Storage (`store_linears`, the `fp8-resident` and `fp8-offload` profiles): the FP8 weight replaces the bf16 one,
  which is freed, so the blocks take about half their bf16 memory (about 16 GB instead of 33 GB) and every job runs
  FP8. The layer is quantized on a compute device (the GPU) and stored where the profile wants it (the GPU, or host
  memory for streaming), so a 24 GB card never holds the bf16 transformer.

Why the project's own layer rather than torchao's float8 quantization, measured against torchao 0.17's
`Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())` (the same scheme) on one H200, compiled, at the real
shapes (`bench/forward_levers.py`, `bench/results/forward_levers_h200.json` and `forward_levers_fp8_h200.json`):
- speed: a 5-frame forward at 1280x720 took 0.286 s with torchao and 0.298 s with this layer in one run; with fast
  accumulation (below) this layer took 0.280 s in the next; at 2048x1536 1.469 s (torchao) and 1.448 s;
- deviation from the bf16 forward: the same (3.8% relative L2 both);
- compiling: the torchao variant took 212 s (quantizing, compiling and timing both shapes) against 12 s for ours,
  a cost every worker would pay at start;
- testing: this layer runs in the CPU tests through PyTorch's CPU `_scaled_mm` kernel, while torchao refuses float8
  without a CUDA GPU of compute capability 8.9, and its compiled extensions are tied to one torch release;
- switching per job: the copies keep the bf16 layer beside the FP8 one, which torchao's in-place quantization does
  not.

LoRA adapters keep working: peft wraps the original `nn.Linear`, and this module replaces peft's base layer only, so
the adapters' own small matrices stay in bf16 and are added to the FP8 product.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
ROW_MULTIPLE = 16  # _scaled_mm wants every dimension divisible by 16


def quantize(weight: torch.Tensor, compute: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """An [out, in] weight as FP8 with one float32 scale per output channel ([1, out]), computed on `compute`."""
    full = weight.detach().to(compute, torch.float32)
    scale = full.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (full / scale).to(FP8), scale.t().contiguous()


class Fp8Linear(nn.Module):
    fast_accum = True
    """Hopper's fast FP8 accumulation in `_scaled_mm`, as torchao's float8 inference uses it: on an H200 the
    compiled 5-frame forward was 7% faster with it (0.282 s against 0.301 s, both with the bias in the product's
    epilogue, which this layer does not do: adding it apart was 0.8% faster still), and its deviation from bf16
    stayed 3.8% relative L2 (`bench/results/forward_levers_fp8_h200.json`)."""

    linear: nn.Linear
    """The original layer: its bias always, and its bf16 weight unless the FP8 weight replaced it (`stored`)."""
    weight_fp8: nn.Parameter
    weight_scale: nn.Parameter

    def __init__(
        self, linear: nn.Linear, stored: bool = False, compute: torch.device | None = None, home: str | None = None
    ) -> None:
        super().__init__()
        home_device = torch.device(home) if home is not None else linear.weight.device
        weight_fp8, scale = quantize(linear.weight, compute or linear.weight.device)
        # Parameters, not buffers: diffusers' streamed group offloading (0.42) returns only parameters to host
        # memory after a block ran, so FP8 buffers would pile up on the GPU block by block.
        self.weight_fp8 = nn.Parameter(weight_fp8.to(home_device), requires_grad=False)
        self.weight_scale = nn.Parameter(scale.to(home_device), requires_grad=False)
        self.stored = stored
        self.enabled = stored
        if stored:
            linear.weight = None  # type: ignore[assignment]  # freed: the FP8 weight is the only copy
            linear.to(home_device)
        self.linear = linear

    @property
    def weight(self) -> torch.Tensor | None:
        """The original weight, for code that inspects it (peft's LoRA layers read `base_layer.weight`); None once
        the FP8 weight replaced it."""
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

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
            quantized,
            self.weight_fp8.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            out_dtype=x.dtype,
            use_fast_accum=self.fast_accum,
        )
        if padding:
            out = out[: out.shape[0] - padding]
        if self.linear.bias is not None:  # compiled, this add fuses with the next pass; in the epilogue it was slower
            out = out + self.linear.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def supported(device: torch.device) -> bool:
    """FP8 tensor cores: CUDA compute capability 8.9 and newer. On the CPU PyTorch's `_scaled_mm` kernel runs it
    (slowly; for tests)."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def _targets(blocks: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Every `nn.Linear` under `blocks` whose sides are multiples of 16, outside LoRA adapters' own matrices (peft's
    `lora_A` / `lora_B`) and not already under an `Fp8Linear`, with its parent and attribute name."""
    return [
        (parent, name, child)
        for path, parent in blocks.named_modules()
        if "lora_" not in path and not isinstance(parent, Fp8Linear)
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0
    ]


def wrap_linears(blocks: nn.Module) -> int:
    """FP8 copies beside the original layers, switched on per job with `fp8_enabled`; returns how many."""
    targets = _targets(blocks)
    for parent, name, child in targets:
        setattr(parent, name, Fp8Linear(child))
    return len(targets)


def store_linears(blocks: nn.Module, compute: torch.device, home: str) -> int:
    """Replace each eligible layer's weight by its FP8 form, quantized on `compute` and kept on `home`; one layer at a
    time, so at most one layer's float32 working copy exists beside the weights. Returns how many."""
    targets = _targets(blocks)
    for parent, name, child in targets:
        setattr(parent, name, Fp8Linear(child, stored=True, compute=compute, home=home))
    return len(targets)


@contextmanager
def fp8_enabled(blocks: nn.Module, enabled: bool) -> Iterator[None]:
    """FP8 copies on (or off) for one job. Stored FP8 weights have no bf16 path: those layers run FP8 either way."""
    layers = [m for m in blocks.modules() if isinstance(m, Fp8Linear)]
    if enabled and not layers:
        raise ValueError("FP8 was asked for, but this worker did not prepare FP8 weights (CHRONOEDIT_FP8)")
    for layer in layers:
        layer.enabled = enabled or layer.stored
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = layer.stored
