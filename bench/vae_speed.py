"""What makes the float32 VAE faster without moving its output (beyond the exact runner's bound): the VAE at its real
shape with random weights, the fast edit's encode (5 frames at 1280x720) and decode (2 latent frames), each variant
timed after a warm-up and compared with the plain result (max abs and relative L2 on the [-1, 1] output).

Variants: plain (what the runner does), cuDNN autotuning, channels-last 3D memory format for the convolutions (with
and without autotuning), and regional `torch.compile` of the residual and attention blocks (the runner's
`compile_vae`: norms and activations fused around cuDNN's convolutions), with and without channels-last.

    PYTHONPATH=. python3 bench/vae_speed.py --out "$OUT"      # on the GPU machine (~2 min)
    PYTHONPATH=. python3 bench/vae_speed.py --only-compiled --size 2048x1536 --out "$OUT"   # the catalog upscale
    python bench/vae_speed.py --tiny --out /tmp/vae            # the script itself, toy size on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chronoedit_core.runner import compile_vae


def timed(fn: Callable[[], torch.Tensor], device: str, repeat: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (autotuning, compilation)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat, out


def deviation(out: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    difference = (out.float() - reference.float()).flatten()
    return {
        "max_abs": float(difference.abs().max()),
        "rel_l2": float(difference.norm() / reference.float().flatten().norm()),
    }


def to_channels_last(vae: AutoencoderKLWan) -> None:
    """Convolution weights in channels-last order (3D and 2D); the rest have no such layout."""
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(module, torch.nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dynamic", action="store_true", help="shape-generic graphs (default: one per shape)")
    parser.add_argument("--only-compiled", action="store_true", help="plain and the compiled variants")
    parser.add_argument("--size", default="1280x720", help="output size, WxH (the catalog upscale's: 2048x1536)")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    width, height = (64, 48) if args.tiny else tuple(int(side) for side in args.size.split("x"))
    torch.manual_seed(0)
    config = {"base_dim": 8, "z_dim": 16} if args.tiny else {}
    reference_vae = AutoencoderKLWan(**config).to(device).eval()
    state = reference_vae.state_dict()
    video = torch.rand(1, 3, 5, height, width, device=device) * 2 - 1
    video[:, :, 1:] = 0  # the condition video: the input image, then zero frames
    latents = torch.randn(1, 16, 2, height // 8, width // 8, device=device)
    results: dict[str, Any] = {
        "meta": {
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__,
            "size": [width, height],
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "compile_dynamic": args.dynamic,
        }
    }

    def variant(name: str, channels_last: bool = False, benchmark: bool = False, compiled: bool = False) -> None:
        if device == "cuda":
            torch.cuda.empty_cache()  # the previous variant's VAE and activations are gone
            torch.cuda.reset_peak_memory_stats()
        vae = AutoencoderKLWan(**config).to(device).eval()
        vae.load_state_dict(state)
        memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        if channels_last:
            to_channels_last(vae)
        if compiled:
            compile_vae(vae, args.dynamic)
        torch.backends.cudnn.benchmark = benchmark
        entry: dict[str, Any] = {}
        started = time.perf_counter()
        try:
            source = video.contiguous(memory_format=memory_format)
            entry["encode_s"], encoded = timed(lambda: vae.encode(source).latent_dist.mode(), device, args.repeat)
            z = latents.contiguous(memory_format=memory_format)
            entry["decode_s"], decoded = timed(lambda: vae.decode(z, return_dict=False)[0], device, args.repeat)
            outputs[name] = (encoded, decoded)
            entry["variant_wall_s"] = time.perf_counter() - started  # with the warm-ups: compilation
            if device == "cuda":
                entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if name != "plain":
                entry["encode_vs_plain"] = deviation(encoded, outputs["plain"][0])
                entry["decode_vs_plain"] = deviation(decoded, outputs["plain"][1])
                entry["speedup"] = (results["plain"]["encode_s"] + results["plain"]["decode_s"]) / (
                    entry["encode_s"] + entry["decode_s"]
                )
        except Exception as error:  # a variant that fails to run is recorded, the rest go on
            entry["error"] = f"{type(error).__name__}: {error}"[:2000]
        finally:
            torch.backends.cudnn.benchmark = False
        results[name] = entry
        print(name, json.dumps(entry), flush=True)

    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    del reference_vae
    variant("plain")
    if not args.only_compiled:
        variant("cudnn_benchmark", benchmark=True)
        variant("channels_last", channels_last=True)
        variant("channels_last_cudnn_benchmark", channels_last=True, benchmark=True)
    variant("compiled_blocks", compiled=True)
    variant("compiled_blocks_channels_last", channels_last=True, compiled=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "vae_speed_tiny_cpu" if args.tiny else f"vae_speed_{results['meta']['device'].split()[-1].lower()}"
    name += "_dynamic" if args.dynamic else ""
    name += "" if args.tiny or args.size == "1280x720" else f"_{args.size}"
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
