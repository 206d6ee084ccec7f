"""Where a fast edit's time goes outside the transformer, at real shapes (1280x720), and what the VAE gains from
cuDNN autotuning (checked against the plain result).

    python bench/stage_profile.py --out bench/results      # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.gpu_bench import PROMPT, build_real_pipeline
from chronoedit_core.runner import EditRequest, EditRunner, make_scheduler


def timed(fn, repeat: int = 3) -> tuple[float, Any]:
    out = fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeat
    print(getattr(fn, "__name__", "stage"), round(seconds, 4), flush=True)
    return seconds, out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    pipe = build_real_pipeline("cuda")
    runner = EditRunner(pipe)
    image = Image.new("RGB", (1280, 720), (180, 120, 60))
    request = EditRequest(prompt=PROMPT, width=1280, height=720, seed=0, num_inference_steps=8, guidance_scale=1.0)
    video = pipe.video_processor.preprocess(image, height=720, width=1280).to("cuda", dtype=torch.float32)
    results: dict[str, float] = {}
    results["encode_prompt_s"], _ = timed(
        lambda: pipe.encode_prompt(PROMPT, "", False, max_sequence_length=512, device="cuda")
    )
    results["encode_image_s"], _ = timed(lambda: pipe.encode_image(image, "cuda"))
    pipe.scheduler = make_scheduler(pipe, 2.0)

    def prepare() -> tuple:
        return pipe.prepare_latents(
            video, 1, 16, 720, 1280, 5, torch.float32, "cuda", torch.Generator("cpu").manual_seed(0), None
        )

    results["prepare_latents_vae_encode_s"], (latents, _) = timed(prepare)
    results["decode_s"], plain = timed(lambda: runner.decode(latents, False))
    results["end_to_end_fast_edit_s"], _ = timed(lambda: runner.run(request, image), repeat=1)
    torch.backends.cudnn.benchmark = True
    results["decode_cudnn_benchmark_s"], tuned = timed(lambda: runner.decode(latents, False))
    results["decode_cudnn_benchmark_max_abs"] = float(abs(tuned - plain).max())
    results["prepare_latents_tuned_s"], _ = timed(prepare)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage_profile_h200.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
