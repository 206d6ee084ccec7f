"""The worker's GPU code path on the tiny model: manifest check, loading straight to the GPU (bf16 transformer and
text encoder, float32 VAE and image encoder), LoRAs switched per job, regional compile at two sizes, and the GPU
memory collector of `/metrics`. Prints one JSON line per check; exits non-zero on a failed check.

    PYTHONPATH=. python3 bench/worker_gpu_smoke.py          # on the GPU machine
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.loras import LoraSet
from chronoedit_core.manifest import verify_manifest
from chronoedit_core.runner import EditRequest, EditRunner, RunnerOptions
from chronoedit_core.tiny import write_tiny_model
from worker.metrics import GpuMemoryCollector, gpu_memory_info


def report(name: str, ok: bool, **details: object) -> bool:
    print(json.dumps({"check": name, "ok": ok, **details}, default=str), flush=True)
    return ok


def main() -> int:
    model = write_tiny_model(Path("/tmp/tiny-gpu"))
    results = [report("manifest", bool(verify_manifest(model).digest))]
    pipe = load_pipeline(model, Placement.resolve("cuda"))
    components = ("transformer", "text_encoder", "vae", "image_encoder")
    dtypes = {name: str(getattr(pipe, name).dtype) for name in components}
    devices = {name: str(getattr(pipe, name).device) for name in components}
    results.append(
        report(
            "placement",
            dtypes["transformer"] == "torch.bfloat16"
            and dtypes["vae"] == "torch.float32"
            and all(d.startswith("cuda") for d in devices.values()),
            dtypes=dtypes,
            devices=devices,
        )
    )
    loras = LoraSet(pipe, {p.stem: p for p in sorted((model / "loras").glob("*.safetensors"))})
    eager = EditRunner(pipe)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    request = EditRequest(prompt="x", width=128, height=96, seed=1, num_inference_steps=4)
    loras.activate(["paintbrush", "distill"])
    with_adapters = np.asarray(eager.run(request, image).image).astype(int)
    loras.activate([])
    base = np.asarray(eager.run(request, image).image).astype(int)
    results.append(report("lora_changes_output", int(np.abs(with_adapters - base).max()) > 2))
    compiled = EditRunner(pipe, RunnerOptions(compile=True))
    for width, height in ((128, 96), (160, 96), (128, 96)):
        sized = EditRequest(prompt="x", width=width, height=height, seed=1, num_inference_steps=4)
        start = time.perf_counter()
        out = np.asarray(compiled.run(sized, image).image).astype(int)
        seconds = time.perf_counter() - start
        if (width, height) == (128, 96):
            results.append(
                report(
                    "compiled_vs_eager",
                    int(np.abs(out - base).max()) <= 8,
                    size=[width, height],
                    max_abs_px=int(np.abs(out - base).max()),
                    seconds=round(seconds, 2),
                )
            )
        else:
            results.append(report("compiled_new_size", True, size=[width, height], seconds=round(seconds, 2)))
    families = list(GpuMemoryCollector(torch.device("cuda")).collect())
    kinds = sorted(sample.labels["kind"] for family in families for sample in family.samples)
    results.append(
        report("gpu_memory_collector", kinds == ["allocated", "peak", "reserved", "total", "used_by_all"], kinds=kinds)
    )
    results.append(report("models_gpu_memory", set(gpu_memory_info("cuda")) == {"gpu_free_bytes", "gpu_total_bytes"}))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
