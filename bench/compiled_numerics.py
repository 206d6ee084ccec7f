"""Where two single-GPU runners part in bfloat16: the tiny model, one runner per GPU in one process (GPU 0 and
GPU 1), each with the worker's options, compiled and then eager. Every transformer pass of a standard edit (20 steps,
guidance 5) is recorded with its inputs; the report names the first pass whose output differs while its inputs are
equal, and the final images' deviation. Controls on GPU 0: the same edit again, and with the unconditional pass run
first.

Measured on two H200s (`bench/results/compiled_numerics_h200x2.json`): eager, the two GPUs give the same bits;
compiled, the fifth step's conditional pass differs by one bfloat16 step with equal inputs, and the tiny random-weight
model carries that to about 5% relative L2 of the image. Repeats and the order of the passes change nothing. This is
why `bench/multi_gpu_api_job.py` checks a worker group's protocol eager.

    PYTHONPATH=. python3 bench/compiled_numerics.py --out "$OUT"      # on a machine with two GPUs (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chronoedit_core.guidance import Predict, combine
from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.runner import EditRequest, EditRunner
from chronoedit_core.tiny import write_tiny_model
from worker.model import runner_options
from worker.settings import WorkerSettings

REQUEST = EditRequest(
    prompt="The user wants to turn the box bright green.", width=640, height=368, seed=1234, num_inference_steps=20
)
Pass = tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]
"""A recorded transformer pass: branch, output, text embeddings, latent input (float32, on the host)."""


class UncondFirst:
    """Sequential guidance with the passes swapped."""

    def noise_pred(self, predict: Predict, guidance_scale: float) -> torch.Tensor:
        uncond = predict("uncond")
        cond = predict("cond")
        return cond if guidance_scale <= 1 else combine(cond, uncond, guidance_scale)


class Recorded:
    """A runner on `device` with the worker's options, its transformer passes recorded."""

    def __init__(self, model: Path, device: str, compiled: bool) -> None:
        placement = Placement.resolve(device)
        options = replace(runner_options(WorkerSettings(), placement), compile=compiled)
        self.runner = EditRunner(load_pipeline(model, placement), options)
        if compiled:  # the worker's warm-up: the shape-generic graph compiled at 1280x720 first
            warm = EditRequest(prompt="warm-up", width=1280, height=720, seed=0, num_inference_steps=1)
            self.runner.run(warm, Image.new("RGB", (1280, 720)))
        self.passes: list[Pass] = []
        predict = self.runner._predict

        def recording(call: dict[str, Any], embeds: dict, branch: str) -> torch.Tensor:
            output = predict(call, embeds, branch)
            host = [t.detach().float().cpu().clone() for t in (output, embeds[branch], call["hidden_states"])]
            self.passes.append((branch, *host))
            return output

        self.runner._predict = recording

    def edit(self, image: Image.Image, guidance: Any = None) -> tuple[np.ndarray, list[Pass]]:
        self.passes = []
        default = self.runner.guidance
        self.runner.guidance = guidance or default
        try:
            result = np.asarray(self.runner.run(REQUEST, image).image).astype(float)
        finally:
            self.runner.guidance = default
        return result, self.passes


def compare(a: tuple[np.ndarray, list[Pass]], b: tuple[np.ndarray, list[Pass]]) -> dict[str, Any]:
    """The images' deviation, and each pass (step, branch) side by side: the first four, the first that differs."""

    def by_pass(passes: list[Pass]) -> dict[tuple[int, str], tuple[torch.Tensor, ...]]:
        keyed, counts = {}, {"cond": 0, "uncond": 0}
        for branch, *tensors in passes:
            counts[branch] += 1
            keyed[(counts[branch], branch)] = tuple(tensors)
        return keyed

    (image_a, passes_a), (image_b, passes_b) = a, b
    keyed_a, keyed_b = by_pass(passes_a), by_pass(passes_b)
    rows = []
    for key in sorted(keyed_a):
        (out_a, emb_a, in_a), (out_b, emb_b, in_b) = keyed_a[key], keyed_b[key]
        rows.append(
            {
                "step_branch": key,
                "out_max": float((out_a - out_b).abs().max()),
                "emb_max": float((emb_a - emb_b).abs().max()),
                "in_max": float((in_a - in_b).abs().max()),
            }
        )
    return {
        "img_max_px": float(np.abs(image_a - image_b).max()),
        "img_rel": float(np.linalg.norm(image_a - image_b) / np.linalg.norm(image_b)),
        "first": rows[:4],
        "diverge": next((row for row in rows if row["out_max"] or row["emb_max"] or row["in_max"]), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "var/compiled-numerics"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(out / "tiny-model")
    image = Image.new("RGB", (320, 240), (236, 232, 226))
    image.paste((40, 90, 160), (110, 60, 210, 190))
    results = {}
    for compiled in (True, False):
        first, second = Recorded(model, "cuda:0", compiled), Recorded(model, "cuda:1", compiled)
        edit = first.edit(image)
        results[f"compile={compiled}"] = {
            "dev0_vs_dev1": compare(edit, second.edit(image)),
            "dev0_vs_dev0_uncond_first": compare(edit, first.edit(image, UncondFirst())),
            "dev0_repeat": compare(edit, first.edit(image)),
        }
        print(json.dumps(results[f"compile={compiled}"]), flush=True)
        del first, second
        torch.cuda.empty_cache()
    (out / "compiled_numerics.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
