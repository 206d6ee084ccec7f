"""Service overhead per job: what the service adds to the model's own time, on a real local stack.

The stack of `bench/load.py` (a Redis, local storage, the API with keys, one worker process serving the tiny random
model with one thread, its INFO log lines on) runs edits one after another, each submitted only once the last one
finished, so no job ever waits behind another. Each is a realistic request (a photo, fast mode, one step), sent with
`Prefer: wait=60` so the answer that says `succeeded` comes the moment the job finishes. Per job:

- end to end: the client's clock from sending the submit to holding that answer (polling, should it come back
  unfinished);
- `timings.total` (created to finished) and the stages from the job record;
- model time: the `inference` stage (the pipeline call: denoising and decoding);
- overhead: end to end - model time. Everything the service does around the model: HTTP, storing the input, the
  job record's transitions, the broker, reading and decoding the input, encoding and uploading the outputs, and
  telling the waiting request.

Reported with p50 and p99 per variant, and as a share of the runner's exact fast edit on one H200
(`exact/fast_edit_8step` of `bench/results/h200.json`: 8 steps at 1280x720, model time alone), the budget being 3%.
Variants: `png` (the image) and `png+mp4` (the image and the editing trajectory), 64x64, `--jobs` each: the fixed
cost of a job; `png@1280x720`, `--large-jobs` of them: the fast edit's own size, where reading the input and
encoding the output cost what they cost in production (the tiny model's output is noise, which compresses worse
than a photo; its model time, 1280x720 on one CPU thread, is long, hence few of them).

    python -m bench.service_overhead --out bench/results/service_overhead_2core.json               # the README's
    python -m bench.service_overhead --jobs 4 --warmup 1 --large-jobs 0 --out /tmp/overhead.json   # make test's

Run from the repository root (`bench.load` is imported from there). The exit status is 1 when a job did not succeed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.load import Stack

ROOT = Path(__file__).resolve().parent.parent
GPU_RESULTS = ROOT / "bench" / "results" / "h200.json"
GPU_FAST_EDIT = "exact/fast_edit_8step"
"""The runner's exact (regionally compiled) fast edit, 8 steps at 1280x720: what a GPU worker's model time is."""
BUDGET_PERCENT = 3.0
REQUEST = {"prompt": "make the box blue", "mode": "fast", "num_inference_steps": 1}
WAIT_SECONDS = 60


@dataclass(frozen=True)
class Variant:
    """A request shape: the outputs asked for, and the size of the input photo and of the output."""

    outputs: tuple[str, ...]
    width: int
    height: int


SMALL = {"png": Variant(("image",), 64, 64), "png+mp4": Variant(("image", "video"), 64, 64)}
LARGE = {"png@1280x720": Variant(("image",), 1280, 720)}
STAGES = ("queue_wait", "input_load", "inference", "encode", "upload")


def photo(width: int, height: int, seed: int = 0) -> str:
    """A PNG with a photo's make-up (smooth shapes, a gradient, a little sensor noise), base64: what clients send."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8))
    shapes = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    gradient = np.linspace(0, 80, width)[None, :, None]
    pixels = np.clip(0.6 * shapes + gradient + rng.normal(0, 3, shapes.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def run_job(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Submit one edit and wait for it; the client's end-to-end seconds and the finished job's view."""
    started = time.perf_counter()
    response = client.post("/v1/edits", json=body, headers={"Prefer": f"wait={WAIT_SECONDS}"})
    if response.status_code not in (200, 202):
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:300]}")
    job = response.json()
    while job["status"] not in ("succeeded", "failed", "canceled"):
        time.sleep(0.05)
        job = client.get(f"/v1/edits/{job['id']}").json()
    return {"end_to_end_s": time.perf_counter() - started, "job": job}


def measure(job: dict[str, Any], end_to_end: float) -> dict[str, Any]:
    """One job's figures; the overhead only when the record has the model's time."""
    timings = job.get("timings") or {}
    model = timings.get("inference")
    return {
        "job_id": job["id"],
        "status": job["status"],
        "end_to_end_s": round(end_to_end, 6),
        "total_s": timings.get("total"),
        "model_s": model,
        "overhead_s": round(end_to_end - model, 6) if model is not None else None,
        "stages_s": {stage: timings.get(stage) for stage in STAGES},
    }


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50, p99 (nearest rank), mean and max, in seconds."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))]

    return {
        "p50": round(statistics.median(ordered), 6),
        "p99": round(rank(0.99), 6),
        "mean": round(statistics.fmean(ordered), 6),
        "max": round(ordered[-1], 6),
    }


def summarise(jobs: list[dict[str, Any]], gpu_seconds: float) -> dict[str, Any]:
    """Percentiles of each figure over the variant's jobs, and the overhead against the GPU fast edit."""
    done = [job for job in jobs if job["overhead_s"] is not None]

    def series(name: str) -> list[float]:
        return [job[name] for job in done]

    summary: dict[str, Any] = {
        "jobs": len(jobs),
        "succeeded": sum(1 for job in jobs if job["status"] == "succeeded"),
        **{name.removesuffix("_s"): percentiles(series(name)) for name in ("end_to_end_s", "total_s", "model_s")},
        "overhead": percentiles(series("overhead_s")),
        "stages": {stage: percentiles([job["stages_s"][stage] for job in done]) for stage in STAGES},
        # Inside the record but in no stage: the job record's transitions, progress writes, the finalising write.
        "between_stages": percentiles(
            [job["total_s"] - sum(job["stages_s"][stage] or 0.0 for stage in STAGES) for job in done]
        ),
        # Outside the record: the HTTP request, storing the input, and telling the waiting request.
        "outside_record": percentiles([job["end_to_end_s"] - job["total_s"] for job in done]),
    }
    overhead = summary["overhead"]
    if overhead is not None:
        summary["overhead_percent_of_gpu_fast_edit"] = {
            key: round(100 * overhead[key] / gpu_seconds, 2) for key in ("p50", "p99")
        }
    return summary


def gpu_fast_edit() -> dict[str, Any]:
    """The committed GPU figure the overhead is compared with."""
    results = json.loads(GPU_RESULTS.read_text())
    entry = results["results"][GPU_FAST_EDIT]
    return {
        "file": str(GPU_RESULTS.relative_to(ROOT)),
        "entry": f"results.{GPU_FAST_EDIT}.s",
        "gpu": results["meta"]["gpu"],
        "seconds": entry["s"],
        "budget_percent": BUDGET_PERCENT,
    }


def run_variants(client: httpx.Client, variants: dict[str, Variant], jobs: int, warmup: int) -> dict[str, Any]:
    """`warmup` uncounted jobs, then `jobs` per variant, the variants taking turns so they see the same machine."""
    bodies = {
        name: {
            **REQUEST,
            "outputs": list(v.outputs),
            "width": v.width,
            "height": v.height,
            "image_base64": photo(v.width, v.height),
        }
        for name, v in variants.items()
    }
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for index in range(warmup + jobs):
        for name, body in bodies.items():
            ran = run_job(client, body)
            if index >= warmup:
                measured[name].append(measure(ran["job"], ran["end_to_end_s"]))
    return measured


def render(results: dict[str, Any]) -> str:
    """Indented JSON with each of the hundreds of jobs on one line."""
    head = json.dumps({name: value for name, value in results.items() if name != "jobs"}, indent=2)
    variants = [
        f"    {json.dumps(name)}: [\n" + ",\n".join(f"      {json.dumps(job)}" for job in jobs) + "\n    ]"
        for name, jobs in results["jobs"].items()
    ]
    return head.removesuffix("\n}") + ',\n  "jobs": {\n' + ",\n".join(variants) + "\n  }\n}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="measured jobs per variant")
    parser.add_argument("--warmup", type=int, default=5, help="jobs per variant run first and not counted")
    parser.add_argument("--large-jobs", type=int, default=5, help="measured 1280x720 jobs (after one not counted)")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the data folder (logs) after the run")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the children are stopped on the way out
    gpu = gpu_fast_edit()
    data = Path(tempfile.mkdtemp(prefix="chronoedit-overhead-"))
    stack = Stack(data, log_level="INFO")
    try:
        stack.start_workers(1)
        headers = {"Authorization": f"Bearer {stack.key('overhead')}"}
        with httpx.Client(base_url=stack.base_url, headers=headers, timeout=WAIT_SECONDS + 30) as client:
            measured = run_variants(client, SMALL, args.jobs, args.warmup)
            if args.large_jobs > 0:
                measured |= run_variants(client, LARGE, args.large_jobs, warmup=1)
        dead = [child.name for child in stack.children if not child.alive()]
    finally:
        stack.stop()
    variants = {name: vars(variant) for name, variant in (SMALL | LARGE).items() if name in measured}
    settings = {"jobs": args.jobs, "warmup": args.warmup, "large_jobs": args.large_jobs, "cpus": os.cpu_count()}
    results = {
        "settings": settings | {"request": REQUEST, "variants": variants},
        "gpu_fast_edit": gpu,
        "summary": {name: summarise(jobs, gpu["seconds"]) for name, jobs in measured.items()},
        "jobs": measured,
        "processes_died": dead,
    }
    print(json.dumps(results["summary"], indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(results))
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    else:
        print(f"data and logs kept in {data}", file=sys.stderr)
    failed = [job["job_id"] for jobs in measured.values() for job in jobs if job["status"] != "succeeded"]
    return 1 if failed or dead else 0


if __name__ == "__main__":
    sys.exit(main())
