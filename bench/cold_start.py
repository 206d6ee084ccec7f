"""Cold start: seconds from a fresh process to a loaded pipeline, from a real-size random-weight checkpoint on the
local disk (bf16 transformer and text encoder, float32 VAE and image encoder, diffusers layout).

    python bench/cold_start.py --dir /tmp/ckpt --out bench/results     # on the GPU machine

Writes the checkpoint once, then for each loader variant drops the page cache (when allowed) and times a fresh
subprocess: the stock way (`from_pretrained` to host memory, then `.to("cuda")`) and this project's
`load_pipeline` (straight to the GPU), the latter also with diffusers' parallel shard loading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LOADERS = {
    "stock_then_to_cuda": (
        "import torch\nfrom diffusers import AutoencoderKLWan, ChronoEditPipeline\n"
        "from transformers import CLIPVisionModel\n"
        "ie = CLIPVisionModel.from_pretrained(D, subfolder='image_encoder', dtype=torch.float32)\n"
        "vae = AutoencoderKLWan.from_pretrained(D, subfolder='vae', dtype=torch.float32)\n"
        "pipe = ChronoEditPipeline.from_pretrained(D, image_encoder=ie, vae=vae, dtype=torch.bfloat16).to('cuda')\n"
    ),
    "load_pipeline_direct": (
        "from pathlib import Path\nfrom chronoedit_core.loading import Placement, load_pipeline\n"
        "pipe = load_pipeline(Path(D), Placement.resolve('cuda'))\n"
    ),
}


def write_checkpoint(directory: Path) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    from bench.gpu_bench import build_real_pipeline

    start = time.perf_counter()
    pipe = build_real_pipeline("cuda")
    pipe.save_pretrained(directory, safe_serialization=True, max_shard_size="5GB")  # shards load in parallel
    del pipe
    torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    return {"write_s": time.perf_counter() - start, "bytes": size}


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def time_loader(name: str, directory: Path, parallel: bool) -> dict[str, float | bool]:
    cold = drop_page_cache()
    code = (
        f"import time\nt=time.perf_counter()\nD={str(directory)!r}\n"
        + LOADERS[name]
        + (
            "import torch\ntorch.cuda.synchronize()\n"
            "print('LOADED', time.perf_counter() - t, torch.cuda.memory_allocated() / 2**30)\n"
        )
    )
    env = {**os.environ, "HF_ENABLE_PARALLEL_LOADING": "yes" if parallel else "no"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - start
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("LOADED")), None)
    if line is None:
        return {"error": result.stderr[-2000:], "page_cache_dropped": cold}
    _, load_s, gib = line.split()
    return {"process_s": wall, "load_s": float(load_s), "gpu_gib": float(gib), "page_cache_dropped": cold}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/chronoedit-14b-random")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    directory = Path(args.dir)
    results: dict[str, object] = {"checkpoint": write_checkpoint(directory)}
    print(json.dumps(results), flush=True)
    size = results["checkpoint"]["bytes"]  # type: ignore[index]
    for name, parallel in (
        ("stock_then_to_cuda", False),
        ("load_pipeline_direct", False),
        ("load_pipeline_direct", True),
    ):
        label = f"{name}{'+parallel' if parallel else ''}"
        entry = time_loader(name, directory, parallel)
        if "load_s" in entry:
            entry["gb_per_s"] = size / 1e9 / float(entry["load_s"])
        results[label] = entry
        print(label, json.dumps(entry), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_start_h200.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
