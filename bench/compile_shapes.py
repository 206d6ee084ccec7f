"""Image sizes and regional compilation: how long a new size takes to run the first time, and what a shape-generic
(dynamic) graph costs per forward, against the default that specialises on the first shape. One H200, real shapes.

    PYTHONPATH=. python3 bench/compile_shapes.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.compile_modes import reset_compile
from bench.gpu_bench import build_real_pipeline
from chronoedit_core.runner import EditRequest, EditRunner, RunnerOptions

FIRST_RUNS = [(1280, 720, False), (1024, 1024, False), (1104, 816, False), (720, 1280, False), (1280, 720, True)]


def first_run_seconds(runner: EditRunner, width: int, height: int, reasoning: bool) -> float:
    request = EditRequest(
        prompt="x",
        width=width,
        height=height,
        seed=0,
        num_inference_steps=1,
        guidance_scale=1.0,
        temporal_reasoning=reasoning,
    )
    latents_image = Image.new("RGB", (width, height))
    torch.cuda.synchronize()
    start = time.perf_counter()
    runner.denoise(request, latents_image)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def steady_forward_seconds(runner: EditRunner) -> float:
    request = EditRequest(prompt="x", width=1280, height=720, seed=0, num_inference_steps=8, guidance_scale=1.0)
    image = Image.new("RGB", (1280, 720))
    runner.denoise(request, image)
    torch.cuda.synchronize()
    start = time.perf_counter()
    runner.denoise(request, image)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    pipe = build_real_pipeline("cuda")
    results: dict[str, Any] = {}
    for label, dynamic in (("specialised", None), ("dynamic", True)):
        reset_compile(pipe)
        runner = EditRunner(pipe, RunnerOptions(compile=True, compile_dynamic=dynamic))
        firsts = {f"{w}x{h}{'x29' if r else ''}": first_run_seconds(runner, w, h, r) for w, h, r in FIRST_RUNS}
        results[label] = {"first_run_s": firsts, "steady_step_s_1280x720": steady_forward_seconds(runner)}
        print(label, json.dumps(results[label]), flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compile_shapes_h200.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
