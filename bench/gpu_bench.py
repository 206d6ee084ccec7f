"""One-run GPU benchmark: the stock diffusers ChronoEditPipeline against this project's EditRunner.

Builds the real ChronoEdit-14B architecture with random weights directly on the GPU (no weights can be downloaded;
timing does not depend on weight values), then in one process times, at 1280x720:
  fast edit (8 steps, guidance 1, flow shift 2), standard edit (50 steps, guidance 5), temporal reasoning
  (29 frames, 8 steps, guidance 1, all steps reasoning), the `turbo` edit (4 steps of a few-step transformer of the
  same architecture); and a catalog upscale to 2048x1536 in fast mode (images per hour: the upscaler LoRA changes
  weights, not the work; on an 80 GB card the runner's `resident` profile tiles the VAE at this size);
for the stock pipeline, the runner in eager mode (must equal stock), the runner in its exact fast configuration
(regional torch.compile + attention backend), and the opt-in modes (FP8, step caching, limited guidance) on the fast,
standard and 2K upscale cases. Reports seconds end to end, seconds per transformer forward, achieved TFLOP/s against
a bf16 matmul rate measured in the same run, peak memory, the ratio to stock, and each output's deviation from
stock's for the same seed.

    python bench/gpu_bench.py --out bench/results        # on the GPU machine (see README, Performance)
    python bench/gpu_bench.py --cases upscale_2k_fast_8step --out bench/results   # one case (stock and exact)
    python bench/gpu_bench.py --tiny                     # smoke run on CPU at toy sizes
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan, ChronoEditPipeline, ChronoEditTransformer3DModel, UniPCMultistepScheduler
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from chronoedit_core.profiles import prefer_expandable_segments
from chronoedit_core.runner import EditRequest, EditRunner, RunnerOptions, frames_to_images
from chronoedit_core.tiny import build_tiny_pipeline, build_tokenizer

REAL_TRANSFORMER = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 36,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": 1280,
    "added_kv_proj_dim": 5120,
    "rope_max_seq_len": 1024,
}
TEXT_TOKENS, IMAGE_TOKENS = 512, 257
PROMPT = "The user wants to add a red hat to the cat while keeping the background unchanged."


@dataclass(frozen=True)
class Case:
    name: str
    steps: int
    guidance: float
    flow_shift: float
    reasoning: bool = False
    size: tuple[int, int] | None = None
    """Output size; None: the run's size (1280x720)."""
    against: str | None = None
    """Another case whose stock time this one's is also compared with (the mode it replaces for users)."""


CASES = [
    Case("fast_edit_8step", 8, 1.0, 2.0),
    Case("standard_edit_50step", 50, 5.0, 5.0),
    Case("temporal_reasoning_29f_8step", 8, 1.0, 2.0, reasoning=True),
    Case("upscale_2k_fast_8step", 8, 1.0, 2.0, size=(2048, 1536)),
    # `turbo`: a few-step distilled transformer has the base architecture, so random weights time it as its preset
    # runs (4 forwards, no guidance, flow shift 5); it replaces the 8-step fast mode for users
    Case("turbo_edit_4step", 4, 1.0, 5.0, against="fast_edit_8step"),
]
TINY_SIZES = {"upscale_2k_fast_8step": (96, 64)}
OPT_IN_CASES = ("fast_edit_8step", "standard_edit_50step", "upscale_2k_fast_8step")
"""The cases the opt-in modes (step caching, FP8, limited guidance where guided) are timed on."""


def build_real_pipeline(device: str) -> ChronoEditPipeline:
    """The 14B architecture with random weights, placed as the worker places it: bf16 transformer and text encoder,
    float32 VAE and image encoder."""
    torch.manual_seed(0)
    with torch.device(device):
        transformer = ChronoEditTransformer3DModel(**REAL_TRANSFORMER).to(torch.bfloat16)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=256384,
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
            )
        ).to(torch.bfloat16)
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=16,
                image_size=224,
                patch_size=14,
                hidden_act="gelu",
            )
        )
        vae = AutoencoderKLWan()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    pipe = ChronoEditPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        image_processor=CLIPImageProcessor(),
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return _for_inference(pipe)


def _for_inference(pipe: ChronoEditPipeline) -> ChronoEditPipeline:
    """Built modules start in training mode: UMT5's dropout would make two runs differ."""
    for component in (pipe.transformer, pipe.text_encoder, pipe.image_encoder, pipe.vae):
        component.eval()
    return pipe


def forward_tflop(tokens: int, dim: int = 5120, ffn: int = 13824, layers: int = 40) -> float:
    """Matrix FLOPs of one transformer forward (2 per multiply-add), as in ../shared/GPU.md."""
    context = TEXT_TOKENS + IMAGE_TOKENS
    linear = 2 * tokens * dim * dim * 6 + 2 * tokens * dim * ffn * 2 + 2 * context * dim * dim * 2
    attention = 4 * tokens * tokens * dim + 4 * tokens * context * dim
    return layers * (linear + attention) / 1e12


def video_tokens(frames: int, width: int, height: int) -> int:
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def matmul_rate(device: str) -> float:
    """Dense bf16 TFLOP/s on random 8192^3 products: the ceiling the forward is measured against."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


class ForwardTimer:
    """CUDA events around every transformer forward."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.events: list[tuple[Any, Any]] = []
        self.tokens: list[int] = []
        transformer.register_forward_pre_hook(self._pre, with_kwargs=True)
        transformer.register_forward_hook(self._post)

    def _pre(self, _module: Any, _args: Any, kwargs: dict) -> None:
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self.events.append((start, None))
        shape = kwargs["hidden_states"].shape
        self.tokens.append(shape[2] * (shape[3] // 2) * (shape[4] // 2))

    def _post(self, *_: Any) -> None:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.events[-1] = (self.events[-1][0], end)

    def reset(self) -> None:
        self.events, self.tokens = [], []

    def summary(self) -> dict[str, float]:
        torch.cuda.synchronize()
        seconds = [start.elapsed_time(end) / 1000 for start, end in self.events]
        tflop = sum(forward_tflop(n) for n in self.tokens)
        return {
            "forwards": len(seconds),
            "forward_s_mean": sum(seconds) / len(seconds),
            "forward_s_total": sum(seconds),
            "forward_tflops": tflop / sum(seconds),
        }


def run_stock(pipe: ChronoEditPipeline, case: Case, image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    pipe.scheduler = UniPCMultistepScheduler.from_config(
        pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=case.flow_shift
    )
    frames = pipe(
        image=image,
        prompt=PROMPT,
        negative_prompt="",
        width=size[0],
        height=size[1],
        num_frames=29 if case.reasoning else 5,
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
        enable_temporal_reasoning=case.reasoning,
        num_temporal_reasoning_steps=case.steps if case.reasoning else 0,
    ).frames[0]
    return frames


def run_ours(runner: EditRunner, case: Case, image: Image.Image, size: tuple[int, int], **extra: Any) -> np.ndarray:
    request = EditRequest(
        prompt=PROMPT,
        width=size[0],
        height=size[1],
        seed=0,
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        flow_shift=case.flow_shift,
        temporal_reasoning=case.reasoning,
        **extra,
    )
    return runner.decode(runner.denoise(request, image), case.reasoning)


def compare(bench: Bench, label: str, case: Case, fn: Any, stock: dict[str, np.ndarray]) -> None:
    key = f"{label}/{case.name}"
    out = bench.timed(key, fn, bench.timer)
    if case.name not in stock:  # stock ran out of memory: nothing to compare with
        return
    bench.results[key]["vs_stock"] = deviation(out, stock[case.name])
    bench.results[key]["speedup"] = bench.results[f"stock/{case.name}"]["s"] / bench.results[key]["s"]
    print(key, "vs stock", json.dumps(bench.results[key]["vs_stock"]), flush=True)


def run_stock_case(bench: Bench, pipe: ChronoEditPipeline, case: Case, inputs: Any) -> np.ndarray | None:
    """Stock's output for `case`, or None when it ran out of GPU memory (recorded; the run goes on)."""
    try:
        return bench.timed(f"stock/{case.name}", lambda: run_stock(pipe, case, *inputs(case)), bench.timer)
    except torch.OutOfMemoryError as exc:
        bench.results[f"stock/{case.name}"] = {"out_of_memory": str(exc)}
        print(f"stock/{case.name} out of memory", flush=True)
        torch.cuda.empty_cache()
        return None


def deviation(frames: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    ours = np.stack([np.asarray(f) for f in frames_to_images(frames)]).astype(int)
    ref = np.stack([np.asarray(f) for f in frames_to_images(reference)]).astype(int)
    return {
        "rel_l2": float(np.linalg.norm(frames - reference) / max(np.linalg.norm(reference), 1e-12)),
        "max_abs_px": int(np.abs(ours - ref).max()),
        "mean_abs_px": float(np.abs(ours - ref).mean()),
        "last_frame_max_abs_px": int(np.abs(ours[-1] - ref[-1]).max()),
    }


@dataclass
class Bench:
    device: str
    timer: ForwardTimer | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def timed(self, label: str, fn: Any, timer: ForwardTimer | None) -> Any:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if timer:
            timer.reset()
        start = time.perf_counter()
        out = fn()
        if self.device == "cuda":
            torch.cuda.synchronize()
        entry: dict[str, Any] = {"s": time.perf_counter() - start}
        if self.device == "cuda":
            entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if timer:
                entry.update(timer.summary())
        self.results[label] = entry
        print(label, json.dumps(entry), flush=True)
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on CPU, to check the script itself")
    parser.add_argument("--attention", default="auto", help="attention backend for the fast runner, or auto")
    parser.add_argument(
        "--cache", default="0.05,0.1", help="FirstBlockCache thresholds to try (last one also with FP8)"
    )
    parser.add_argument("--cases", default="", help="comma-separated case names to run (default: all)")
    parser.add_argument(
        "--guidance-steps",
        default="30",
        help="limited guidance to time on the guided cases: guided steps, comma-separated ('' for none)",
    )
    parser.add_argument(
        "--fp8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prepare FP8 weight copies and time the opt-in FP8 mode (they take about 15 GiB: on an 80 GB GPU "
        "--no-fp8 leaves the exact runs the memory they have on a worker without CHRONOEDIT_FP8)",
    )
    args = parser.parse_args()
    prefer_expandable_segments()  # the allocator setting workers run with, for stock and runner alike
    device = "cpu" if args.tiny else "cuda"
    size = (64, 48) if args.tiny else (1280, 720)
    cases = [case for case in CASES if not args.cases or case.name in args.cases.split(",")]
    bench = Bench(device)
    meta: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "size": size}
    meta["cases"] = [case.name for case in cases]
    started = time.perf_counter()
    pipe = build_tiny_pipeline() if args.tiny else build_real_pipeline(device)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    meta["build_s"] = time.perf_counter() - started
    if device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
        meta["matmul_bf16_tflops"] = matmul_rate(device)
        print("meta", json.dumps(meta), flush=True)
    timer = bench.timer = ForwardTimer(pipe.transformer) if device == "cuda" else None

    def inputs(case: Case) -> tuple[Image.Image, tuple[int, int]]:
        """The input image and output size: an upscale case starts from an image half its output size."""
        out = (TINY_SIZES.get(case.name) if args.tiny else case.size) or size
        source = (out[0] // 2, out[1] // 2) if case.size else out
        return Image.new("RGB", source, (180, 120, 60)), out

    warm = Case("warmup", 2, 1.0, 2.0)
    stock: dict[str, np.ndarray] = {}
    bench.timed("stock/warmup", lambda: run_stock(pipe, warm, *inputs(warm)), timer)
    for case in cases:
        if (out := run_stock_case(bench, pipe, case, inputs)) is not None:
            stock[case.name] = out
    if CASES[0] in cases:  # the runner without its speed-ups must equal stock
        eager = EditRunner(pipe)
        compare(bench, "eager", CASES[0], lambda: run_ours(eager, CASES[0], *inputs(CASES[0])), stock)

    backend = None if args.tiny else pick_attention(pipe, args.attention, bench)
    meta["attention_backend"] = backend
    options = RunnerOptions(compile=not args.tiny, attention_backend=backend, fp8=args.fp8 and not args.tiny)
    runner = EditRunner(pipe, options)
    # every shape compiles once before it is timed: one short run per distinct output size and frame count
    shapes = {(inputs(case)[1], case.reasoning): case for case in cases}
    for (shape, reasoning), case in shapes.items():
        label = f"warmup_{shape[0]}x{shape[1]}{'_reasoning' if reasoning else ''}"
        warm_shape = Case(label, 1, 1.0, 2.0, reasoning, case.size)
        bench.timed(f"exact/compile_{warm_shape.name}", lambda w=warm_shape: run_ours(runner, w, *inputs(w)), timer)
    for case in cases:
        compare(bench, "exact", case, lambda c=case: run_ours(runner, c, *inputs(c)), stock)
        bench.results[f"exact/{case.name}"]["vae_tiling"] = list(runner.tiled)  # stages the memory profile tiled
    opt_in_cases = [case for case in cases if case.name in OPT_IN_CASES]
    modes: list[tuple[str, dict[str, Any]]] = [
        (f"cache{t}", {"step_cache_threshold": float(t)}) for t in args.cache.split(",") if t
    ]
    if options.fp8 and opt_in_cases:
        for size_case in {inputs(case)[1]: case for case in opt_in_cases}.values():  # FP8 compiles per shape too
            warm_fp8 = Case(f"warmup_{size_case.name}", 1, 1.0, 2.0, size=size_case.size)
            bench.timed(
                f"fp8/compile_{warm_fp8.name}", lambda w=warm_fp8: run_ours(runner, w, *inputs(w), fp8=True), timer
            )
        last_cache = modes[-1][1] if modes else None
        modes.append(("fp8", {"fp8": True}))
        if last_cache is not None:
            modes.append((f"fp8+cache{last_cache['step_cache_threshold']}", {"fp8": True, **last_cache}))
    # limited guidance (the guided steps of 50; fewer steps in the tiny run), for the guided cases only
    limited = [int(n) for n in args.guidance_steps.split(",") if n]
    modes += [(f"guidance{n}", {"guidance_steps": n}) for n in limited]
    if options.fp8:  # the two opt-ins together
        modes += [(f"fp8+guidance{n}", {"fp8": True, "guidance_steps": n}) for n in limited]
    for label, extra in modes:
        for case in opt_in_cases:
            if "guidance_steps" in extra and (case.guidance <= 1 or extra["guidance_steps"] > case.steps):
                continue
            compare(bench, label, case, lambda c=case, e=extra: run_ours(runner, c, *inputs(c), **e), stock)
    for case in cases:
        seconds = bench.results[f"exact/{case.name}"]["s"]
        bench.results[f"exact/{case.name}"]["images_per_hour"] = 3600 / seconds
        if case.name in stock:
            bench.results[f"stock/{case.name}"]["images_per_hour"] = 3600 / bench.results[f"stock/{case.name}"]["s"]
        if case.against and f"stock/{case.against}" in bench.results:
            against = bench.results[f"stock/{case.against}"]["s"]
            bench.results[f"exact/{case.name}"][f"x_vs_stock_{case.against}"] = against / seconds
    name = "tiny_cpu" if args.tiny else _gpu_label(meta["gpu"])
    if args.cases:
        name += "_" + "_".join(case.name for case in cases)
    write(Path(args.out), name, meta, bench.results, cases)


def _gpu_label(gpu: str) -> str:
    """`h200`, `h100`, ...: the file name of a run's results."""
    for label in ("H200", "H100", "A100", "L40S"):
        if label in gpu:
            return label.lower()
    return gpu.lower().replace(" ", "_")


def pick_attention(pipe: ChronoEditPipeline, choice: str, bench: Bench) -> str | None:
    """Time one eager 5-frame forward per available backend; keep the fastest."""
    if choice != "auto":
        return None if choice == "native" else choice
    transformer = pipe.transformer
    hidden = torch.randn(1, 36, 2, 90, 160, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(1, TEXT_TOKENS, 4096, device="cuda", dtype=torch.bfloat16)
    image = torch.randn(1, IMAGE_TOKENS, 1280, device="cuda", dtype=torch.bfloat16)
    timestep = torch.tensor([500], device="cuda")
    timings: dict[str, float] = {}
    for name in ("native", "_native_cudnn", "_native_flash", "_native_efficient"):
        try:
            transformer.set_attention_backend(name)
            with torch.no_grad():

                def run():
                    return transformer(
                        hidden_states=hidden,
                        timestep=timestep,
                        encoder_hidden_states=text,
                        encoder_hidden_states_image=image,
                        return_dict=False,
                    )

                run()
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(3):
                    run()
                torch.cuda.synchronize()
            timings[name] = (time.perf_counter() - start) / 3
        except Exception as exc:  # a backend this build lacks
            timings[name] = float("nan")
            print("attention backend", name, "failed:", repr(exc)[:200], flush=True)
    transformer.set_attention_backend("native")
    bench.results["attention_backends_forward_s"] = timings
    print("attention", timings, flush=True)
    valid = {k: v for k, v in timings.items() if v == v}
    best = min(valid, key=valid.get)
    return None if best == "native" else best


def write(out: Path, name: str, meta: dict[str, Any], results: dict[str, Any], cases: list[Case]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    modes = list(dict.fromkeys(k.split("/")[0] for k in results if "/" in k and not k.startswith(("stock", "eager"))))
    modes = [m for m in modes if any(f"{m}/{case.name}" in results for case in cases)]
    lines = [
        "| case | stock s | " + " | ".join(f"{m} s (x, max px dev)" for m in modes) + " |",
        "|---" * (len(modes) + 2) + "|",
    ]
    for case in cases:
        base = results[f"stock/{case.name}"].get("s")
        cells = [f"{base:.2f}" if base else "out of memory"] + [_cell(results, f"{m}/{case.name}", base) for m in modes]
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cell(results: dict[str, Any], key: str, base: float | None) -> str:
    if key not in results:
        return "-"
    entry = results[key]
    if base is None:
        return f"{entry['s']:.2f}"
    return f"{entry['s']:.2f} ({base / entry['s']:.2f}x, {entry['vs_stock']['last_frame_max_abs_px']})"


if __name__ == "__main__":
    main()
