"""Where the compiled transformer forward's time goes, and what the levers left on it are worth.

One forward of the real 14B architecture with random weights (timing does not depend on their values) at the fast
edit's shape (5 frames at 1280x720, 7,200 tokens) and the catalog upscale's (2048x1536, 24,576 tokens), on one GPU:

- `eager`: the reference output (bf16, no compilation);
- `compiled`: the worker's exact mode (each block's forward compiled, one graph per shape), with a profiler
  breakdown of GPU time by kernel kind (matrix multiplies, attention, Triton-fused elementwise, other) and the idle
  time between kernels (the most that replaying the forward as a CUDA graph could remove: launch gaps);
- `fused_projections`: diffusers' `fuse_projections` (one QKV matrix for self-attention, one KV matrix for each
  cross-attention context) on top of compilation;
- `cross_kv`: what the cross-attention's keys and values of the text and image context cost per forward (their
  projections and norms); they are the same at every step of a job, so that is what caching them could save;
- `fp8`: this project's FP8 layer (`chronoedit_core.fp8`), compiled, with its breakdown; `fp8_precise_accum`
  without Hopper's fast FP8 accumulation;
- `torchao_fp8`: torchao's float8 dynamic quantization (per-row activation and weight scales, the same scheme as
  ours), compiled; needs torchao and a GPU of compute capability 8.9 or newer.

Each variant reports seconds per forward (CUDA events, after warm-up) and its output's deviation from the eager
reference (relative L2, max abs).

    PYTHONPATH=. python3 bench/forward_levers.py --out "$OUT"        # one H100/H200 (~5 min)
    python bench/forward_levers.py --tiny --out /tmp/levers           # the script itself on the CPU, toy sizes
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import ChronoEditTransformer3DModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.gpu_bench import IMAGE_TOKENS, REAL_TRANSFORMER, TEXT_TOKENS, forward_tflop, matmul_rate
from chronoedit_core.fp8 import Fp8Linear, fp8_enabled, wrap_linears

TINY_TRANSFORMER = {
    **REAL_TRANSFORMER,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "image_dim": 32,
    "added_kv_proj_dim": 32,
}
SHAPES = {"1280x720": (2, 90, 160), "2048x1536": (2, 192, 256)}
"""Latent frames, height and width of each shape's input (5 frames encode to 2 latent frames)."""
TINY_SHAPES = {"64x48": (2, 6, 8), "96x64": (2, 8, 12)}
KINDS = ("gemm", "attention", "triton", "other")


def kernel_kind(name: str) -> str:
    """Triton kernels first: inductor names them after the operations they fuse (`..._scaled_mm_...`,
    `..._cudnn_attention_...`) though they only prepare their inputs."""
    lowered = name.lower()
    if lowered.startswith("triton"):
        return "triton"
    if any(key in lowered for key in ("flash", "fmha", "cudnn", "attention", "sdpa")):
        return "attention"
    if any(key in lowered for key in ("gemm", "nvjet", "cutlass", "xmma", "matmul")):
        return "gemm"
    return "other"


class Forward:
    """The transformer at one shape: its inputs, and one forward as a closure."""

    def __init__(self, transformer: Any, shape: tuple[int, int, int], config: dict[str, Any], device: str) -> None:
        generator = torch.Generator(device).manual_seed(1)
        frames, height, width = shape
        self.tokens = frames * height * width // 4
        self.inputs = {
            "hidden_states": torch.randn(
                1, 36, frames, height, width, device=device, dtype=torch.bfloat16, generator=generator
            ),
            "timestep": torch.tensor([500], device=device),
            "encoder_hidden_states": torch.randn(
                1, TEXT_TOKENS, config["text_dim"], device=device, dtype=torch.bfloat16, generator=generator
            ),
            "encoder_hidden_states_image": torch.randn(
                1, IMAGE_TOKENS, config["image_dim"], device=device, dtype=torch.bfloat16, generator=generator
            ),
        }
        self.transformer, self.device = transformer, device

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        return self.transformer(**self.inputs, return_dict=False)[0]

    def timed(self, fn: Callable[[], torch.Tensor] | None = None, repeat: int = 5) -> tuple[float, torch.Tensor]:
        """Seconds per call after two warm-up calls, and the last output."""
        fn = fn or self
        for _ in range(2):
            out = fn()
        if self.device != "cuda":
            start = time.perf_counter()
            for _ in range(repeat):
                out = fn()
            return (time.perf_counter() - start) / repeat, out
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(repeat):
            out = fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / 1000 / repeat, out


def deviation(out: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    difference = (out.float() - reference.float()).flatten()
    return {
        "rel_l2": float(difference.norm() / reference.float().flatten().norm()),
        "max_abs": float(difference.abs().max()),
    }


def breakdown(forward: Forward, fn: Callable[[], torch.Tensor] | None = None) -> dict[str, Any]:
    """GPU kernel time of one call by kind, idle time between its kernels, and every kernel's total, costliest
    first."""
    fn = fn or forward
    fn()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if forward.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        fn()
        if forward.device == "cuda":
            torch.cuda.synchronize()
    kernels = [
        (event.name(), event.start_ns(), event.duration_ns())
        for event in profiler.profiler.kineto_results.events()
        if event.device_type() == torch.autograd.DeviceType.CUDA and event.duration_ns() > 0
    ]
    if not kernels:
        return {"kernels": 0}
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)
    for name, _, duration in kernels:
        by_kind[kernel_kind(name)] += duration / 1e9
        by_name[name[:120]] += duration / 1e9
    first = min(start for _, start, _ in kernels)
    last = max(start + duration for _, start, duration in kernels)
    busy = sum(by_kind.values())
    span = (last - first) / 1e9
    return {
        "kernels": len(kernels),
        "span_s": span,
        "busy_s": busy,
        "idle_s": max(span - busy, 0.0),
        "by_kind_s": {kind: by_kind.get(kind, 0.0) for kind in KINDS},
        "kernels_s": dict(sorted(by_name.items(), key=lambda item: -item[1])),
    }


def compile_blocks(transformer: Any) -> None:
    """The worker's exact mode at a fixed shape: each block's forward compiled, a graph per shape."""
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = 64
    for block in transformer.blocks:
        block.forward = torch.compile(block.__class__.forward.__get__(block), fullgraph=True, dynamic=False)


def uncompile_blocks(transformer: Any) -> None:
    for block in transformer.blocks:
        block.__dict__.pop("forward", None)
    torch._dynamo.reset()


@torch.no_grad()
def cross_kv_cost(forward: Forward) -> dict[str, float]:
    """Seconds per forward spent projecting (and normalising) the cross-attention's text and image keys and values,
    eager, all blocks: the upper bound of what caching them across a job's steps saves."""
    transformer = forward.transformer
    context = transformer.condition_embedder(
        forward.inputs["timestep"],
        forward.inputs["encoder_hidden_states"],
        forward.inputs["encoder_hidden_states_image"],
    )
    text, image = context[2], context[3]

    def run() -> torch.Tensor:
        for block in transformer.blocks:
            attn = block.attn2
            key = attn.norm_k(attn.to_k(text))
            value = attn.to_v(text)
            key_img = attn.norm_added_k(attn.add_k_proj(image))
            value_img = attn.add_v_proj(image)
        return key + value.sum() + key_img.sum() + value_img.sum()

    seconds, _ = forward.timed(run)
    return {"s": seconds}


def measure(forwards: dict[str, Forward], label: str, results: dict[str, Any], references: dict[str, Any]) -> None:
    for shape, forward in forwards.items():
        seconds, out = forward.timed(repeat=3 if forward.tokens > 10_000 else 5)
        entry: dict[str, Any] = {"s": seconds}
        if forward.device == "cuda":  # the real architecture's FLOPs
            entry["tflops"] = forward_tflop(forward.tokens) / seconds
        if label == "eager":
            references[shape] = out
        else:
            entry["vs_eager"] = deviation(out, references[shape])
        results.setdefault(label, {})[shape] = entry
        print(label, shape, json.dumps(entry), flush=True)


def attempt(results: dict[str, Any], label: str, step: Callable[[], None]) -> None:
    """One variant; a failure is recorded and the run goes on to the next."""
    started = time.perf_counter()
    print(f"--- {label} ({time.strftime('%H:%M:%S')})", flush=True)
    try:
        step()
    except Exception as exc:  # a kernel or library this machine lacks must not cost the other variants
        results.setdefault("errors", {})[label] = repr(exc)[:600]
        print(label, "failed:", repr(exc)[:600], flush=True)
    finally:
        results.setdefault("wall_s", {})[label] = round(time.perf_counter() - started, 1)


def build(config: dict[str, Any], device: str) -> Any:
    torch.manual_seed(0)
    with torch.device(device):
        return ChronoEditTransformer3DModel(**config).to(torch.bfloat16).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU, to check the script itself")
    parser.add_argument("--skip", default="", help="comma-separated variants to leave out")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    config, shapes = (TINY_TRANSFORMER, TINY_SHAPES) if args.tiny else (REAL_TRANSFORMER, SHAPES)
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, Any] = {
        "meta": {"torch": torch.__version__, "python": platform.python_version(), "device": device}
    }
    if device == "cuda":
        results["meta"]["gpu"] = torch.cuda.get_device_name()
        results["meta"]["matmul_bf16_tflops"] = matmul_rate(device)
    references: dict[str, torch.Tensor] = {}
    transformer = build(config, device)
    forwards = {shape: Forward(transformer, dims, config, device) for shape, dims in shapes.items()}
    measure(forwards, "eager", results, references)

    def compiled() -> None:
        compile_blocks(transformer)
        measure(forwards, "compiled", results, references)
        results["breakdown"] = {f"compiled/{shape}": breakdown(forward) for shape, forward in forwards.items()}

    def fused() -> None:
        for block in transformer.blocks:
            block.attn1.fuse_projections()
            block.attn2.fuse_projections()
        compile_blocks(transformer)
        measure(forwards, "fused_projections", results, references)
        for block in transformer.blocks:
            block.attn1.unfuse_projections()
            block.attn2.unfuse_projections()

    def fp8() -> None:
        uncompile_blocks(transformer)
        wrap_linears(transformer.blocks)
        with fp8_enabled(transformer.blocks, True):
            compile_blocks(transformer)
            measure(forwards, "fp8", results, references)
            for shape, forward in forwards.items():
                results.setdefault("breakdown", {})[f"fp8/{shape}"] = breakdown(forward)

    def fp8_precise_accum() -> None:
        """The FP8 layer without Hopper's fast accumulation."""
        Fp8Linear.fast_accum = False
        try:
            with fp8_enabled(transformer.blocks, True):
                compile_blocks(transformer)
                measure(forwards, "fp8_precise_accum", results, references)
        finally:
            Fp8Linear.fast_accum = True

    def torchao_fp8() -> None:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        nonlocal transformer
        uncompile_blocks(transformer)
        del transformer
        for forward in forwards.values():
            forward.transformer = None
        if device == "cuda":
            torch.cuda.empty_cache()
        fresh = build(config, device)  # the same seed: the same weights as the reference's
        quantize_(fresh.blocks, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        for forward in forwards.values():
            forward.transformer = fresh
        compile_blocks(fresh)
        measure(forwards, "torchao_fp8", results, references)
        results["meta"]["torchao"] = __import__("torchao").__version__

    variants: list[tuple[str, Callable[[], None]]] = [
        ("compiled", compiled),
        ("cross_kv", lambda: results.__setitem__("cross_kv", {s: cross_kv_cost(f) for s, f in forwards.items()})),
        ("fused_projections", fused),
        ("fp8", fp8),
        ("fp8_precise_accum", fp8_precise_accum),
        ("torchao_fp8", torchao_fp8),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "forward_levers_tiny.json" if args.tiny else f"forward_levers_{_gpu_label(results['meta']['gpu'])}.json"
    for label, step in variants:
        if label not in skip:
            attempt(results, label, step)
            (out / name).write_text(json.dumps(results, indent=2))  # what is measured so far survives a time-out
    print("wrote", out / name, flush=True)


def _gpu_label(gpu: str) -> str:
    for label in ("H200", "H100"):
        if label in gpu:
            return label.lower()
    return gpu.lower().replace(" ", "_")


if __name__ == "__main__":
    main()
