"""Two GPUs against one, in one run: this project's single-GPU runner (the worker's exact mode: regional
`torch.compile`, shape-generic) on rank 0 alone, then the worker group's layouts on both ranks, with the group's own
per-step control exchange, at 1280x720 with random weights at the real 14B shapes.

Cases: fast edit (5 frames, 8 steps, guidance 1), standard edit (5 frames, 50 steps, guidance 5), temporal
reasoning (29 frames, all steps reasoning) with 50 steps and guidance 5, and with 8 steps and guidance 1. Layouts:
guidance split (`{"guidance": 2}`) for the guided cases, Ulysses 2 (`{"ulysses": 2}`, diffusers' context
parallelism) for all of them, and last, for the guidance-1 cases, Ulysses 2 compiled again with inductor's
compute/communication reordering (exploratory: not a worker option). For each: seconds end to end, per step (CUDA
events at each step's end, first step excluded) and per transformer forward, peak GPU memory per rank, and the
deviation from the single-GPU output for the same seed (latents' relative L2, decoded frames' largest pixel
difference).

Cases longer than `--steps-cap` steps (default 10) for guided 29-frame reasoning run that many steps only; their
full-run figure is an estimate, stated as such: measured fixed cost (run time minus steps x per-step time) plus 50 x
the measured per-step time. The standard edit runs its full 50 steps.

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. \\
        python3 -m torch.distributed.run --standalone --nproc-per-node 2 bench/multi_gpu_bench.py --out "$OUT"
    PYTHONPATH=. python -m torch.distributed.run --standalone --nproc-per-node 2 bench/multi_gpu_bench.py --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.gpu_bench import PROMPT, ForwardTimer, build_real_pipeline, forward_tflop, video_tokens
from chronoedit_core.guidance import SequentialGuidance
from chronoedit_core.parallel import ParallelLayout, guidance_executor, make_mesh, split_sequence
from chronoedit_core.runner import EditRequest, EditRunner, RunnerOptions
from chronoedit_core.tiny import build_tiny_pipeline
from worker.group.channel import FollowerChannel, LeaderChannel

for _name in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
    os.environ.setdefault(_name, "0" if _name == "NCCL_NVLS_ENABLE" else "1")

GUIDANCE_SPLIT, ULYSSES = ParallelLayout(guidance=2), ParallelLayout(ulysses=2)


@dataclass(frozen=True)
class Case:
    name: str
    steps: int
    guidance: float
    flow_shift: float
    reasoning: bool = False
    capped: bool = False
    """Run `--steps-cap` steps and estimate the full run from them."""


CASES = [
    Case("fast_edit_8step_g1", 8, 1.0, 2.0),
    Case("standard_edit_50step_g5", 50, 5.0, 5.0),
    Case("reasoning_29f_50step_g5", 50, 5.0, 5.0, reasoning=True, capped=True),
    Case("reasoning_29f_8step_g1", 8, 1.0, 2.0, reasoning=True),
]


@dataclass
class Ranks:
    rank: int
    device: str
    host: dist.ProcessGroup
    """gloo with a long timeout: rank 1 waits here while rank 0 measures alone."""
    control: dist.ProcessGroup
    """gloo, as a worker group's: the per-step go/stop decision."""

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def start(tiny: bool) -> Ranks:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    assert world == 2, "run under torchrun with --nproc-per-node 2"
    if tiny:
        dist.init_process_group("gloo")
        torch.accelerator.device_count = lambda: 1  # diffusers' context parallelism on CPU (tests/parallel_ranks.py)
        device = "cpu"
    else:
        device = f"cuda:{rank}"
        torch.cuda.set_device(device)
        # A rank that fails leaves the other in a collective: give up after 5 minutes, not NCCL's 10.
        dist.init_process_group("nccl", device_id=torch.device(device), timeout=timedelta(minutes=5))
    host = dist.new_group(backend="gloo", timeout=timedelta(hours=1))
    control = dist.new_group(backend="gloo", timeout=timedelta(minutes=10))
    return Ranks(rank, device, host, control)


def build(ranks: Ranks, tiny: bool) -> Any:
    """The same weights on both ranks: built from one seed, then broadcast from rank 0 to be sure."""
    pipe = build_tiny_pipeline() if tiny else build_real_pipeline(ranks.device)
    pipe.to(ranks.device)
    with torch.no_grad():
        for component in (pipe.transformer, pipe.text_encoder, pipe.image_encoder, pipe.vae):
            for tensor in component.state_dict().values():
                dist.broadcast(tensor, src=0)
    return pipe


class StepClock:
    """Marks each step's end on the device timeline; on rank 0 also decides for the group like a worker's leader."""

    def __init__(self, ranks: Ranks, together: bool) -> None:
        self.ranks, self.together = ranks, together
        self.leader = LeaderChannel(ranks.control, dict, 1e9, _never) if ranks.rank == 0 else None
        self.follower = FollowerChannel(ranks.control) if ranks.rank else None
        self.marks: list[Any] = []

    def __call__(self, step: int, total: int) -> bool:
        self.marks.append(_mark(self.ranks.device))
        if self.together and self.leader is not None:
            self.leader.decide(True)
        elif self.together and self.follower is not None:
            return self.follower.decision()
        return True

    def per_step(self) -> float:
        """Mean step time, first step excluded (it also covers prompt and image encoding)."""
        if len(self.marks) < 2:
            return float("nan")
        return _elapsed(self.marks[0], self.marks[-1], self.ranks.device) / (len(self.marks) - 1)


def _never(error: BaseException) -> Any:
    raise error


def _mark(device: str) -> Any:
    if not device.startswith("cuda"):
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _elapsed(start: Any, end: Any, device: str) -> float:
    if not device.startswith("cuda"):
        return float(end - start)
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) / 1000


def request_for(case: Case, size: tuple[int, int], steps: int) -> EditRequest:
    return EditRequest(
        prompt=PROMPT,
        negative_prompt="",
        width=size[0],
        height=size[1],
        seed=0,
        num_inference_steps=steps,
        guidance_scale=case.guidance,
        flow_shift=case.flow_shift,
        temporal_reasoning=case.reasoning,
        reasoning_steps=steps if case.reasoning else None,
    )


def measure(
    ranks: Ranks, runner: EditRunner, timer: Any, case: Case, size: tuple[int, int], cap: int, together: bool
) -> tuple[dict[str, Any], torch.Tensor, Any]:
    """One timed run of `case` (on both ranks when `together`); rank 0 decodes. Returns (entry, latents, frames)."""
    steps = min(case.steps, cap) if case.capped else case.steps
    clock = StepClock(ranks, together)
    image = Image.new("RGB", size, (180, 120, 60))
    ranks.sync()
    if ranks.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if timer is not None:
        timer.reset()
    started = time.perf_counter()
    latents = runner.denoise(request_for(case, size, steps), image, on_step=clock)
    frames = runner.decode(latents, case.reasoning) if ranks.rank == 0 else None
    ranks.sync()
    seconds = time.perf_counter() - started
    per_step = clock.per_step()
    entry: dict[str, Any] = {"steps_run": steps, "s": seconds, "per_step_s": per_step}
    entry["fixed_s"] = seconds - steps * per_step
    if steps != case.steps:
        entry["full_run_estimated_s"] = entry["fixed_s"] + case.steps * per_step
    if timer is not None:
        entry.update(timer.summary())
    if ranks.device.startswith("cuda"):
        peaks: list[Any] = [torch.cuda.max_memory_allocated() / 2**30, None]
        if together:
            dist.all_gather_object(peaks, peaks[0], group=ranks.host)
        entry["peak_gib_per_rank"] = peaks
    return entry, latents, frames


def deviation(latents: torch.Tensor, frames: Any, reference: tuple[torch.Tensor, Any]) -> dict[str, float]:
    ref_latents, ref_frames = reference
    ours, ref = (np.clip(f * 255, 0, 255).astype("uint8").astype(int) for f in (frames, ref_frames))
    return {
        "latents_rel_l2": float((latents - ref_latents).float().norm() / ref_latents.float().norm().clamp_min(1e-12)),
        "max_abs_px": int(np.abs(ours - ref).max()),
        "last_frame_max_abs_px": int(np.abs(ours[-1] - ref[-1]).max()),
    }


class Bench:
    def __init__(self, ranks: Ranks, pipe: Any, size: tuple[int, int], cap: int, out: Path, tiny: bool) -> None:
        self.ranks, self.pipe, self.size, self.cap, self.out, self.tiny = ranks, pipe, size, cap, out, tiny
        self.runner = EditRunner(pipe, RunnerOptions(compile=not tiny, compile_dynamic=True))  # the worker's
        self.timer = ForwardTimer(pipe.transformer) if not tiny else None
        self.meshes = {layout: make_mesh(layout, "cpu" if tiny else "cuda") for layout in (GUIDANCE_SPLIT, ULYSSES)}
        self.results: dict[str, Any] = {}
        self.single: dict[str, tuple[torch.Tensor, Any]] = {}
        self.meta: dict[str, Any] = {}

    def warm_up(self, label: str, together: bool) -> None:
        """Compile (or recompile) both shapes: one step at 5 and one at 29 frames."""
        started = time.perf_counter()
        for reasoning in (False, True):
            case = Case("warm-up", 1, 5.0 if together else 1.0, 5.0, reasoning=reasoning)
            measure(self.ranks, self.runner, self.timer, case, self.size, self.cap, together)
        self.record(f"{label}/warm_up", {"s": time.perf_counter() - started})

    def run_single(self) -> None:
        """Rank 0 alone; rank 1 waits on the host group."""
        if self.ranks.rank == 0:
            self.runner.guidance = SequentialGuidance()
            self.warm_up("single", together=False)
            for case in CASES:
                entry, latents, frames = measure(self.ranks, self.runner, self.timer, case, self.size, self.cap, False)
                self.single[case.name] = (latents, frames)
                self.record(f"single/{case.name}", entry)
        dist.barrier(group=self.ranks.host)

    def run_layout(self, label: str, layout: ParallelLayout, cases: list[Case]) -> None:
        self.runner.guidance = guidance_executor(layout, self.meshes[layout])
        self.warm_up(label, together=True)
        for case in cases:
            entry, latents, frames = measure(self.ranks, self.runner, self.timer, case, self.size, self.cap, True)
            if self.ranks.rank == 0:
                entry["vs_single"] = deviation(latents, frames, self.single[case.name])
                entry.update(self.ratios(case, entry))
                self.record(f"{label}/{case.name}", entry)

    def ratios(self, case: Case, entry: dict[str, Any]) -> dict[str, float]:
        base = self.results[f"single/{case.name}"]
        ratios = {
            "speedup_end_to_end": base["s"] / entry["s"],
            "speedup_per_step": base["per_step_s"] / entry["per_step_s"],
        }
        if "forward_s_mean" in entry:
            ratios["speedup_per_forward"] = base["forward_s_mean"] / entry["forward_s_mean"]
        if "full_run_estimated_s" in entry:
            ratios["speedup_full_run_estimated"] = base["full_run_estimated_s"] / entry["full_run_estimated_s"]
        return ratios

    def record(self, key: str, entry: dict[str, Any]) -> None:
        self.results[key] = entry
        if self.ranks.rank == 0:
            print(key, json.dumps(entry, default=float), flush=True)
            self.write()

    def write(self) -> None:
        """After every measurement, so a run cut short still leaves what it measured (rank 0 writes)."""
        if self.ranks.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        name = "multi_gpu_tiny_cpu" if self.tiny else "multi_gpu_h200x2"
        document = {"meta": self.meta, "results": self.results, "summary": summary(self.results)}
        (self.out / f"{name}.json").write_text(json.dumps(document, indent=1, default=float))


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per case: the best 2-GPU layout by (estimated) full-run time, and its ratios to the single-GPU runner."""
    best: dict[str, Any] = {}
    for case in CASES:
        candidates = {key.split("/")[0]: entry for key, entry in results.items() if key.endswith(f"/{case.name}")}
        candidates.pop("single", None)
        if not candidates:
            continue
        label, entry = min(candidates.items(), key=lambda item: item[1].get("full_run_estimated_s", item[1]["s"]))
        keys = ("speedup_end_to_end", "speedup_full_run_estimated", "speedup_per_step", "speedup_per_forward")
        best[case.name] = {"layout": label, **{k: entry[k] for k in keys if k in entry}, **entry["vs_single"]}
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    parser.add_argument("--tiny", action="store_true", help="the tiny model on CPU ranks (gloo), to check the script")
    parser.add_argument("--steps-cap", type=int, default=10, help="steps run for guided 29-frame reasoning")
    parser.add_argument("--no-compare", action="store_true", help="skip Ulysses on the guided cases")
    parser.add_argument("--no-overlap", action="store_true", help="skip Ulysses with inductor's comm reordering")
    args = parser.parse_args()
    ranks = start(args.tiny)
    started = time.perf_counter()
    pipe = build(ranks, args.tiny)
    size = (64, 48) if args.tiny else (1280, 720)
    bench = Bench(ranks, pipe, size, args.steps_cap, Path(args.out), args.tiny)
    bench.meta = describe(ranks, size, args.steps_cap, time.perf_counter() - started)
    try:
        bench.run_single()
        guided = [case for case in CASES if case.guidance > 1]
        bench.run_layout("guidance2", GUIDANCE_SPLIT, guided)
        split_sequence(pipe.transformer, ULYSSES, bench.meshes[ULYSSES])  # for good: the hooks stay on
        unguided = [case for case in CASES if case.guidance <= 1]
        bench.run_layout("ulysses2", ULYSSES, unguided if args.no_compare else unguided + guided)
        if not args.no_overlap:
            # Exploratory, last: inductor may move each all-to-all's wait behind independent work (the next
            # projection), the same arithmetic. Dynamo's caches are dropped so the blocks compile again with it.
            torch._inductor.config.reorder_for_compute_comm_overlap = True
            torch._dynamo.reset()
            bench.run_layout("ulysses2_overlap", ULYSSES, unguided)
    except Exception as exc:  # keep what was measured, say what failed, and let torchrun stop the other rank
        traceback.print_exc()
        bench.meta["error"] = f"rank {ranks.rank}: {exc.__class__.__name__}: {exc}"
        bench.write()
        os._exit(1)
    if ranks.rank == 0:
        bench.meta["total_s"] = time.perf_counter() - started
        bench.write()
        print("summary", json.dumps(summary(bench.results), indent=1, default=float), flush=True)
    dist.destroy_process_group()


def describe(ranks: Ranks, size: tuple[int, int], cap: int, build_s: float) -> dict[str, Any]:
    import diffusers

    meta: dict[str, Any] = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "size": size,
        "build_s": build_s,
        "tokens_5_frames": video_tokens(5, *size),
        "tokens_29_frames": video_tokens(29, *size),
        "forward_tflop_5_frames": forward_tflop(video_tokens(5, *size)),
        "runner": "exact: regional torch.compile (dynamic), SDPA; the worker's defaults on CUDA",
        "single": "rank 0 alone, rank 1 idle",
        "per_step": "CUDA events at each step's end on rank 0; mean over steps 2..n",
        "estimate": f"guided 29-frame reasoning runs {cap} steps; full_run_estimated_s = fixed_s + 50 x per_step_s, "
        "fixed_s = measured run time - steps run x per_step_s",
    }
    if ranks.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    return meta


if __name__ == "__main__":
    main()
