"""Does a slower-compiling `torch.compile` mode buy a faster exact forward, and what would a bfloat16 VAE save?
Same setup as gpu_bench.py (one H200, 1280x720, random weights at real shapes), timed against stock in one run.

    PYTHONPATH=. python3 bench/compile_modes.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.gpu_bench import CASES, Bench, Case, ForwardTimer, build_real_pipeline, compare, run_ours, run_stock
from chronoedit_core.runner import EditRequest, EditRunner, RunnerOptions

MODES = (None, "max-autotune-no-cudagraphs")


def reset_compile(pipe: Any) -> None:
    for block in pipe.transformer.blocks:
        block.__dict__.pop("forward", None)  # back to the class's eager forward
    torch._dynamo.reset()


def vae_bf16(pipe: Any, runner: EditRunner, image: Image.Image, bench: Bench) -> None:
    request = EditRequest(prompt="x", width=1280, height=720, seed=0, num_inference_steps=8, guidance_scale=1.0)
    latents = runner.denoise(request, image)
    exact = bench.timed("vae_decode/float32", lambda: runner.decode(latents, False), None)
    pipe.vae.to(torch.bfloat16)
    fast = bench.timed("vae_decode/bfloat16", lambda: runner.decode(latents, False), None)
    pipe.vae.to(torch.float32)
    bench.results["vae_decode/bfloat16"]["max_abs_px"] = int(np.abs(np.round(fast * 255) - np.round(exact * 255)).max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    pipe = build_real_pipeline("cuda")
    bench = Bench("cuda")
    bench.timer = ForwardTimer(pipe.transformer)
    image = Image.new("RGB", (1280, 720), (180, 120, 60))
    size = (1280, 720)
    cases = CASES[:2]
    stock = {}
    bench.timed("stock/warmup", lambda: run_stock(pipe, Case("warmup", 2, 1.0, 2.0), image, size), bench.timer)
    for case in cases:
        stock[case.name] = bench.timed(
            f"stock/{case.name}", lambda c=case: run_stock(pipe, c, image, size), bench.timer
        )
    for mode in MODES:
        label = f"compile[{mode or 'default'}]"
        reset_compile(pipe)
        runner = EditRunner(pipe, RunnerOptions(compile=True, compile_mode=mode))
        start = time.perf_counter()
        run_ours(runner, Case("warmup", 1, 1.0, 2.0), image, size)
        bench.results[f"{label}/compile_s"] = time.perf_counter() - start
        print(label, "compiled in", bench.results[f"{label}/compile_s"], flush=True)
        for case in cases:
            compare(bench, label, case, lambda c=case, r=runner: run_ours(r, c, image, size), stock)
        save(Path(args.out), bench.results)  # a mode that outlasts the time limit still leaves the others
    vae_bf16(pipe, runner, image, bench)
    save(Path(args.out), bench.results)


def save(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_modes_h200.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
