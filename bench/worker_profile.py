"""One fast edit's way through the service on a GPU, stage by stage: a real-size random-weight checkpoint on the local
disk, the embedded stack's pieces (redis-server, local storage, `chronoedit api`) and one worker (`chronoedit worker`:
compiled, `resident`), fast-preset edits at 1280x720 submitted over HTTP one at a time with `Prefer: wait`. Reports
each job's stage timings from its record (queue wait, input read, inference, encode, upload, total), what the client
saw end to end, and the share of the time outside the model.

The fast preset's numbers (8 steps, guidance 1, flow shift 2) run without the distill LoRA, which random weights do
not have: an adapter changes the weights, not the work. Weight digests are not verified (hashing 47 GB would only add
start time).

    PYTHONPATH=. python3 bench/worker_profile.py --out "$OUT" --dir /tmp/ckpt --data /tmp/stack   # GPU, ~50 GB disk
    ... --size 2048x1536 --compile-vae        # a catalog worker's upscale size, with the VAE compiled for it
    python bench/worker_profile.py --tiny --out /tmp/profile                      # the same at toy size on a CPU

Needs the service's dependencies as wheels on the GPU machine (see `bench/multi_gpu_api_job.py`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.local_stack import start_local_stack
from service.cli.processes import Child

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("queue_wait", "input_load", "inference", "encode", "upload", "total")
FAST = {"mode": "standard", "num_inference_steps": 8, "guidance_scale": 1.0, "flow_shift": 2.0}
PROMPT = "The user wants to add a red hat to the cat while keeping the background unchanged."


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "var/worker-profile"))
    parser.add_argument("--dir", default="/tmp/ckpt", help="where the random-weight checkpoint is written")
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--data", default=None, help="the stack's folder (storage, Redis); default OUT/stack")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU, to check the script itself")
    parser.add_argument("--size", default="1280x720", help="the edits' output size, WxH (not with --tiny)")
    parser.add_argument(
        "--compile-vae",
        action="store_true",
        help="the worker compiles its VAE for that size (CHRONOEDIT_COMPILE_VAE_SIZE)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    width, height = (64, 48) if args.tiny else (int(side) for side in args.size.split("x"))
    size = (width, height)
    summary: dict[str, Any] = {"size": size, "jobs": args.jobs, "preset": FAST, "compile_vae": args.compile_vae}
    started = time.monotonic()
    model = write_model(Path(args.dir), args.tiny)
    summary["checkpoint_s"] = time.monotonic() - started
    children: list[Child] = []
    try:
        data = Path(args.data) if args.data else out / "stack"
        vae = {"CHRONOEDIT_COMPILE_VAE_SIZE": f"{width}x{height}"} if args.compile_vae else {}
        base = start_stack(data, out, model, args.tiny, children, summary, **vae)
        with httpx.Client(base_url=base, timeout=300) as client:
            summary["worker"] = client.get("/v1/models").json()["data"]
            summary["runs"] = [run_job(client, photo(size), size, seed) for seed in range(args.jobs)]
    finally:
        for child in reversed(children):
            child.stop(timeout=60)
    summarise(summary)
    name = "worker_profile_tiny_cpu" if args.tiny else f"worker_profile_{gpu_label()}"
    name += "" if args.tiny or args.size == "1280x720" else f"_{args.size}"
    name += "_compiled_vae" if args.compile_vae else ""
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary["median"], indent=1), flush=True)
    return 0 if all(run["status"] == "succeeded" for run in summary["runs"]) else 1


def write_model(directory: Path, tiny: bool) -> Path:
    """The checkpoint, written in a child process so that its GPU memory is gone before the worker starts."""
    if (directory / "model_index.json").is_file():
        return directory
    if tiny:
        code = "from pathlib import Path; from chronoedit_core.tiny import write_tiny_model; write_tiny_model(Path(D))"
    else:
        code = "from pathlib import Path; from bench.cold_start import write_checkpoint; write_checkpoint(Path(D))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", f"D = {str(directory)!r}\n{code}"], check=True, env=env)
    return directory


def start_stack(
    data: Path, logs: Path, model: Path, tiny: bool, children: list[Child], summary: dict[str, Any], **env: str
) -> str:
    base, worker, summary["worker_ready_s"] = start_local_stack(
        data,
        logs,
        model,
        [],
        children,
        timeout=900,
        CHRONOEDIT_VERIFY_MANIFEST="false",
        CHRONOEDIT_QUEUES='["edits"]',
        CHRONOEDIT_WORKER_NAME="gpu-worker",
        **({"CHRONOEDIT_DEVICE": "cpu"} if tiny else {}),
        **env,
    )
    assert worker.alive(), "the worker exited"
    return base


def photo(size: tuple[int, int]) -> bytes:
    """A synthetic product shot at the output size (PNG), as a shop would send it."""
    image = Image.new("RGB", size, (236, 232, 226))
    width, height = size
    image.paste((40, 90, 160), (width // 3, height // 4, 2 * width // 3, 3 * height // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_job(client: httpx.Client, image: bytes, size: tuple[int, int], seed: int) -> dict[str, Any]:
    fields = {"prompt": PROMPT, "seed": str(seed), "width": str(size[0]), "height": str(size[1])}
    fields.update({name: str(value) for name, value in FAST.items()})
    started = time.monotonic()
    response = client.post(
        "/v1/edits", files={"image": ("photo.png", image, "image/png")}, data=fields, headers={"Prefer": "wait=240"}
    )
    client_s = time.monotonic() - started
    job = response.json()
    return {
        "status": job.get("status"),
        "client_s": client_s,
        "timings": job.get("timings"),
        "error": job.get("error"),
        "ran_with": job.get("ran_with"),
    }


def summarise(summary: dict[str, Any]) -> None:
    """Medians over the jobs after the first (its prompt's embedding was not cached yet), and the share outside
    the model: end to end as the client saw it minus `inference`."""
    runs = [run for run in summary["runs"][1:] if run["status"] == "succeeded"] or summary["runs"]
    median: dict[str, Any] = {
        stage: statistics.median(run["timings"][stage] for run in runs if run["timings"]) for stage in STAGES
    }
    median["client_s"] = statistics.median(run["client_s"] for run in runs)
    median["outside_model_s"] = median["client_s"] - median["inference"]
    median["outside_model_share"] = median["outside_model_s"] / median["client_s"]
    summary["median"] = median


def gpu_label() -> str:
    import torch

    name = torch.cuda.get_device_name()
    return next((label.lower() for label in ("H200", "H100") if label in name), name.lower().replace(" ", "_"))


if __name__ == "__main__":
    sys.exit(main())
