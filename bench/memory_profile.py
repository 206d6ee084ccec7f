"""Peak GPU memory of an edit above the resident weights, by output size and frame count, at the real 14B shapes
(one H200, random weights). The worker's memory estimate (`chronoedit_core/memory.py`) is fitted to these points.

    PYTHONPATH=. python3 bench/memory_profile.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from bench.gpu_bench import build_real_pipeline
from chronoedit_core.runner import EditRequest, EditRunner

SIZES = [(640, 368), (1280, 720), (1920, 1088), (2048, 2048)]
FRAMES = [False, True]  # 5 frames, 29 frames (temporal reasoning)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    pipe = build_real_pipeline("cuda")
    runner = EditRunner(pipe)
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    points = []
    for width, height in SIZES:
        for reasoning in FRAMES:
            request = EditRequest(
                prompt="x",
                width=width,
                height=height,
                seed=0,
                num_inference_steps=1,
                guidance_scale=1.0,
                temporal_reasoning=reasoning,
            )
            point = {"width": width, "height": height, "frames": request.num_frames, "resident_bytes": resident}
            latents = None
            try:
                torch.cuda.reset_peak_memory_stats()
                latents = runner.denoise(request, Image.new("RGB", (width, height)))
                point["denoise_peak_bytes"] = torch.cuda.max_memory_allocated() - resident
                torch.cuda.reset_peak_memory_stats()
                runner.decode(latents, reasoning)
                point["decode_peak_bytes"] = torch.cuda.max_memory_allocated() - resident
            except torch.OutOfMemoryError as exc:
                point["out_of_memory"] = str(exc)[:200]
            del latents
            torch.cuda.empty_cache()
            points.append(point)
            print(json.dumps(point), flush=True)
    total = torch.cuda.get_device_properties(0).total_memory
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_profile_h200.json").write_text(json.dumps({"total_bytes": total, "points": points}, indent=1))


if __name__ == "__main__":
    main()
