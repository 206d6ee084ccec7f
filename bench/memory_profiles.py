"""Memory profiles on one GPU capped like the cards they are for: peak memory, seconds, largest sizes, deviation.

Each run is one profile under one cap, in its own process, with torch's allocator capped
(`torch.cuda.set_per_process_memory_fraction`, through the worker's own `limit_memory`) to what a card of the class
leaves the process (`bench/profile_table.py`: 21.5 GiB for 24 GB cards, 44 for 48 GB, 78 for 80 GB). Weights held in
host memory count toward none of it, as on a real card. The real 14B architecture is built with random weights on the
GPU (`bench/gpu_bench.py`; timing and memory do not depend on the values), the runner applies the profile exactly as
a worker does (FP8 storage, streaming hooks, regional compile), and then the cap is set.

Per run, at 1280x720: compile warm-up; the fast edit (8 steps, guidance 1) end to end; the standard edit (50 steps,
guidance 5) timed over its first steps and extrapolated (labelled so); a small guided edit compared with `resident`'s
output for the same seed; prompt encoding (streamed text encoder against a cache hit); the largest output the
admission takes, run, then the next size up run anyway, or smaller ones until one runs (one step and the decoding
each); one 29-frame step. A run
writes its JSON after every measurement; the parent merges the runs into `memory_profiles_<gpu>.json` and `.md` as
they finish. The time budget is shared among the runs by weight, each run skips what it cannot finish in its share,
and a run that overruns is stopped: the command ends within the budget with everything measured so far.

    python3 -m pip install -q --no-deps .whl/*.whl   # the GPU machine lacks diffusers (see README, Memory profiles)
    PYTHONPATH=. python3 bench/memory_profiles.py --out "$OUT"       # one H100 or H200: under 8 minutes
    PYTHONPATH=. python3 bench/memory_profiles.py --out "$OUT" --only offload@24 lean@48   # some runs only
    python bench/memory_profiles.py --tiny --out /tmp/profiles     # the same script on a CPU at toy sizes
    python bench/memory_profiles.py --dry-run                      # the runs and their time shares

`python bench/profile_table.py <json>` turns the results into the README's table.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu_bench import PROMPT  # noqa: E402
from bench.profile_steps import Case, deviation, measure_all, text_encoder_on_cpu  # noqa: E402
from bench.profile_table import CAPS_GIB, RUN_WEIGHTS, RUNS, detail_table, label, merge, readme_table  # noqa: E402
from chronoedit_core import memory  # noqa: E402
from chronoedit_core.fp8 import supported as fp8_supported  # noqa: E402
from chronoedit_core.memory import (  # noqa: E402
    GiB,
    TooLargeForDevice,
    available_bytes,
    limit_memory,
)
from chronoedit_core.placement import weight_bytes  # noqa: E402
from chronoedit_core.presets import CACHED_PROMPTS  # noqa: E402
from chronoedit_core.profiles import PROFILES, pick, prefer_expandable_segments  # noqa: E402
from chronoedit_core.runner import EditRequest, EditRunner, EditStopped, RunnerOptions  # noqa: E402

RETRY_EAGER = 3
"""A run's exit status when compiling failed at warm-up: the parent runs it again without compile."""
MIN_RUN_S = 40.0
"""A run given less than this of the budget is not started (setting up alone takes about half of it)."""
GRACE_S = 30.0
"""How long past its share a run may go (finishing the measurement under way) before it is stopped."""


class Recorder:
    """One run's results, written to disk after every measurement."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.data = path, dict(header)
        self.save()

    def put(self, key: str, value: Any) -> Any:
        self.data[key] = value
        self.save()
        print(f"[{self.data.get('label')}] {key}", json.dumps(value, default=str)[:400], flush=True)
        return value

    def note(self, kind: str, key: str, value: Any) -> None:
        """One entry of `errors`, `skipped` or `timings`."""
        self.data.setdefault(kind, {})[key] = value
        self.save()
        if kind != "timings":
            print(f"[{self.data.get('label')}] {kind} {key}: {value}", flush=True)

    def save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=str))
        temporary.replace(self.path)


class Gpu:
    """Synchronising clocks and memory figures; on the CPU (`--tiny`) the memory figures are absent."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset(self) -> None:
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peaks(self) -> dict[str, float]:
        if not self.cuda:
            return {}
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / GiB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GiB,
        }

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


class ProbeRunner(EditRunner):
    """The worker's runner, with one addition for measurements: `forced_plan` runs an edit with that VAE plan,
    skipping the size admission (to find out whether a size the admission refuses would in fact have fit)."""

    forced_plan: memory.Plan | None = None

    def _plan(self, width: int, height: int, frames: int) -> memory.Plan:
        return self.forced_plan if self.forced_plan is not None else super()._plan(width, height, frames)


class Run:
    """One profile under one cap, measured step by step until its deadline."""

    def __init__(self, args: argparse.Namespace, recorder: Recorder) -> None:
        self.args, self.rec = args, recorder
        self.tiny: bool = bool(args.tiny)
        self.device = "cpu" if args.tiny else "cuda"
        self.gpu = Gpu(self.device)
        self.profile = PROFILES[args.profile]
        self.work = Path(args.work)
        self.deadline, self.stopped_at = args.deadline, args.stopped_at
        self.size = (64, 48) if self.tiny else (1280, 720)
        self._runner: ProbeRunner | None = None

    @property
    def runner(self) -> ProbeRunner:
        assert self._runner is not None, "set up first"
        return self._runner

    def left(self, until_stopped: bool = False) -> float:
        """Seconds left of the run's share of the budget, or until the parent stops it (share plus grace)."""
        return (self.stopped_at if until_stopped else self.deadline) - time.time()

    def request(self, case: Case, size: tuple[int, int] | None = None) -> EditRequest:
        width, height = size or self.size
        return EditRequest(
            prompt=PROMPT,
            width=width,
            height=height,
            seed=0,
            num_inference_steps=case.steps,
            guidance_scale=case.guidance,
            flow_shift=case.flow_shift,
            temporal_reasoning=case.frames > 5,
            reasoning_steps=case.steps if case.frames > 5 else None,
        )

    def setup(self, compile_blocks: bool) -> None:
        from bench.gpu_bench import build_real_pipeline
        from chronoedit_core.tiny import build_tiny_pipeline

        started = time.perf_counter()
        pipe = build_tiny_pipeline().to(self.device) if self.tiny else build_real_pipeline(self.device)
        built = time.perf_counter() - started
        options = RunnerOptions(compile=compile_blocks, compile_dynamic=True, profile=self.profile, device=self.device)
        self._runner = ProbeRunner(pipe, options)
        self.gpu.release()
        cap = int(self.args.cap_gib * GiB)
        if self.gpu.cuda:
            limit_memory(self.device, cap)
        components = ("transformer", "text_encoder", "image_encoder", "vae")
        weights = {c: {k: v / GiB for k, v in weight_bytes(getattr(pipe, c)).items()} for c in components}
        streamed = weight_bytes(pipe.transformer).get("cpu", 0) if self.profile.streams_transformer else 0
        self.rec.put(
            "setup",
            {
                "build_s": built,
                "apply_profile_s": time.perf_counter() - started - built,
                "compile": compile_blocks,
                "exact": self.profile.exact,
                "tiling": self.profile.tiling,
                "weights_gib": weights,
                "host_weights_gib": sum(w.get("cpu", 0.0) for w in weights.values()) if self.gpu.cuda else None,
                "streamed_gb_per_forward": streamed / 1e9,
                "gpu_allocated_idle_gib": torch.cuda.memory_allocated() / GiB if self.gpu.cuda else None,
                "budget_idle_gib": available_bytes(self.device) / GiB if self.gpu.cuda else None,
                "max_area": {"5": self.runner.max_area(5), "29": self.runner.max_area(29)},
                "auto_picks": pick(cap, fp8_supported(torch.device(self.device))).name,
                "host": host_memory(),
            },
        )

    def admits(self, size: tuple[int, int]) -> bool:
        try:
            self.runner.plan(self.request(Case("admission", 1, 1.0, 2.0), size))
        except TooLargeForDevice:
            return False
        return True

    def attempt(self, request: EditRequest, stop_after: int | None = None) -> dict[str, Any]:
        """`edit`, with a refusal by the admission or running out of GPU memory recorded instead of raised."""
        entry: dict[str, Any] = {"size": [request.width, request.height], "frames": request.num_frames}
        try:
            entry.update(self.edit(request, stop_after), ran=True)
        except TooLargeForDevice as refused:
            entry["refused"] = refused.message
        except torch.OutOfMemoryError as exc:
            entry.update(out_of_memory=str(exc)[:300], at_gib=self.gpu.peaks())
        finally:
            self.gpu.release()
        return entry

    def edit(self, request: EditRequest, stop_after: int | None = None) -> dict[str, Any]:
        """Denoise and decode `request`, timing each and each step; peaks per stage."""
        runner = self.runner
        marks: list[float] = []

        def on_step(step: int, total: int) -> bool:
            self.gpu.sync()
            marks.append(time.perf_counter())
            return stop_after is None or step < stop_after

        image = Image.new("RGB", (request.width, request.height), (180, 120, 60))
        self.gpu.reset()
        started = time.perf_counter()
        entry: dict[str, Any] = {}
        try:
            latents = runner.denoise(request, image, on_step)
        except EditStopped:
            latents = None
        self.gpu.sync()
        entry.update(denoise_s=time.perf_counter() - started, denoise=self.gpu.peaks(), steps_run=len(marks))
        if len(marks) > 1:
            entry["step_s"] = (marks[-1] - marks[0]) / (len(marks) - 1)
            entry["before_first_step_s"] = marks[0] - started - entry["step_s"]
        if latents is not None:
            self.gpu.reset()
            decode_started = time.perf_counter()
            frames = runner.decode(latents, request.temporal_reasoning)
            self.gpu.sync()
            entry.update(decode_s=time.perf_counter() - decode_started, decode=self.gpu.peaks())
            entry["s"] = entry["denoise_s"] + entry["decode_s"]
            entry["_latents"], entry["_frames"] = latents.float().cpu(), frames
        entry["vae_tiling"] = list(runner.tiled)
        return entry

    def compare(self, name: str, entry: dict[str, Any]) -> None:
        """Keep `resident`'s outputs as the reference; compare every later run's with them."""
        latents, frames = entry.pop("_latents", None), entry.pop("_frames", None)
        if latents is None:
            return
        reference = self.work / f"reference_{name}.pt"
        if self.profile.name == "resident":
            torch.save({"latents": latents, "frames": frames}, reference)
        elif reference.exists():
            expected = torch.load(reference, weights_only=False)
            entry["vs_resident"] = deviation(latents, frames, expected["latents"], expected["frames"])


def host_memory() -> dict[str, float]:
    """The process's resident host memory (pinned weights included) and torch's pinned-memory pool."""
    status = Path("/proc/self/status")
    rss = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmRSS")), "0")
    figures = {"rss_gib": int(rss) * 1024 / GiB}
    stats = getattr(torch.cuda, "host_memory_stats", None)
    if stats is not None and torch.cuda.is_available():
        figures.update({k: v / GiB for k, v in stats().items() if k.endswith("bytes.current")})
    return figures


def copy_rate_gbs() -> float:
    """Pinned host-to-device copy rate: what streamed weights move at."""
    source = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    target = torch.empty_like(source, device="cuda")
    target.copy_(source, non_blocking=True)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(3):
        target.copy_(source, non_blocking=True)
    torch.cuda.synchronize()
    return 3 * (1 << 30) / (time.perf_counter() - started) / 1e9


def main_child(args: argparse.Namespace) -> int:
    out = Path(args.out) / "runs"
    out.mkdir(parents=True, exist_ok=True)
    name = label(args.profile, args.cap)
    header = {"label": name, "profile": args.profile, "cap": args.cap, "cap_gib": args.cap_gib, "meta": _meta(args)}
    path = out / f"{name}.json"
    if args.eager and path.exists():  # the run again without compile: keep why compiling failed
        header["compiled_attempt"] = {"errors": json.loads(path.read_text()).get("errors")}
    run = Run(args, Recorder(path, header))
    compile_blocks = not args.tiny and not args.eager
    try:
        run.setup(compile_blocks)
    except Exception as exc:
        run.rec.note("errors", "setup", repr(exc)[:600])
        raise
    try:
        _warm_up(run)
    except Exception as exc:
        run.rec.note("errors", "warmup", repr(exc)[:2000])
        if compile_blocks and _compile_error(exc):
            return RETRY_EAGER
        run.gpu.release()  # e.g. out of memory: the measurements compile at their first step instead
    measure_all(run)
    run.rec.put("status", "done")
    return 0


def _warm_up(run: Run) -> None:
    """As a worker warms up: the prompts every worker keeps encoded, then one step and the decoding at 1280x720 (or
    the largest 16:9 size admitted), which compiles the shape-generic graph."""
    run.runner.prompts.preload(CACHED_PROMPTS, run.runner.device)
    fitting = run.runner.fitting_size(*run.size)
    if fitting is None:
        run.rec.note("skipped", "warmup", "the admission takes no size")
        return
    started = time.perf_counter()
    entry = run.edit(run.request(Case("warm-up", 1, 1.0, 2.0), (fitting.width, fitting.height)))
    entry.pop("_latents", None), entry.pop("_frames", None)
    run.rec.put("warmup", {**entry, "wall_s": time.perf_counter() - started})
    run.gpu.release()


def _compile_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) comes from dynamo or inductor."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__module__.startswith(("torch._dynamo", "torch._inductor")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers

    meta: dict[str, Any] = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "eager": bool(args.eager),
    }
    if not args.tiny:
        properties = torch.cuda.get_device_properties(0)
        meta.update(gpu=properties.name, total_gib=properties.total_memory / GiB, h2d_gbs=copy_rate_gbs())
        meta["compute_capability"] = list(torch.cuda.get_device_capability(0))
    return meta


def selected_runs(only: list[str] | None) -> list[tuple[str, str]]:
    runs = [run for run in RUNS if not only or label(*run) in only]
    unknown = set(only or ()) - {label(*run) for run in RUNS}
    if unknown:
        raise SystemExit(f"unknown runs {sorted(unknown)}; known: {', '.join(label(*r) for r in RUNS)}")
    return runs


def shares(runs: list[tuple[str, str]], seconds: float) -> list[float]:
    """Each run's share of `seconds` by its weight."""
    weights = [RUN_WEIGHTS.get(label(*run), 0.8) for run in runs]
    return [seconds * w / sum(weights) for w in weights]


class Parent:
    """Starts the runs one after another within the budget and merges their results as they finish."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.work = Path(tempfile.mkdtemp(prefix="memory-profiles-"))
        self.deadline = time.time() + args.budget
        self.skipped: list[str] = []

    def run_all(self, runs: list[tuple[str, str]]) -> dict[str, Any]:
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        for index, (profile, cap) in enumerate(runs):
            share = shares(runs[index:], self.deadline - time.time() - self.reserve())[0]
            if share < MIN_RUN_S:
                print(f"=== skipping {label(profile, cap)}: {share:.0f} s of the budget left for it", flush=True)
                self.skipped.append(label(profile, cap))
                continue
            status = self.spawn(profile, cap, share, eager=False)
            if status == RETRY_EAGER:
                status = self.spawn(profile, cap, max(share - 15, MIN_RUN_S), eager=True)
            self.merge()
        self.measure_cpu_encoder()
        return self.merge()

    def reserve(self) -> float:
        """Seconds kept for the CPU text-encoder timing at the end."""
        return 0.0 if self.args.tiny else 15.0

    def spawn(self, profile: str, cap: str, share: float, eager: bool) -> int:
        name = label(profile, cap)
        argv = [sys.executable, __file__, "--child", "--profile", profile, "--cap", cap, "--out", str(self.out)]
        hard = min(share + GRACE_S, self.deadline - time.time())
        argv += ["--cap-gib", str(CAPS_GIB[cap]), "--work", str(self.work), "--deadline", str(time.time() + share)]
        argv += ["--stopped-at", str(time.time() + hard)] + ["--tiny"] * self.args.tiny + ["--eager"] * eager
        print(f"=== {name}{' (eager)' * eager}: {share:.0f} s, stopped after {hard:.0f} s", flush=True)
        try:
            status = subprocess.run(argv, timeout=max(hard, 1.0), check=False).returncode
        except subprocess.TimeoutExpired:
            print(f"=== {name} ran past its time and was stopped; what it measured is kept", flush=True)
            return -1
        print(f"=== {name} exited with {status}", flush=True)
        return status

    def plan(self, runs: list[tuple[str, str]]) -> None:
        """What `run_all` would do if every run took its whole share (runs that finish early leave more to later
        ones)."""
        print(f"budget {self.args.budget:.0f} s, {self.reserve():.0f} s of it kept for the CPU text-encoder timing")
        for (profile, cap), share in zip(runs, shares(runs, self.args.budget - self.reserve()), strict=True):
            verdict = "starts" if share >= MIN_RUN_S else "would be skipped"
            run = f"{label(profile, cap):18} cap {CAPS_GIB[cap]:5.1f} GiB"
            print(f"{run}  {share:5.0f} s (+{GRACE_S:.0f} s grace)  {verdict}")

    def measure_cpu_encoder(self) -> None:
        if self.deadline - time.time() < self.reserve():
            return
        try:
            figures = text_encoder_on_cpu(self.args.tiny)
        except Exception as exc:  # a side figure: never worth the runs' results
            figures = {"error": repr(exc)[:600]}
        (self.out / "runs" / "text_encoder_cpu.json").write_text(json.dumps(figures, indent=1))

    def merge(self) -> dict[str, Any]:
        """Every run's JSON in `memory_profiles_<gpu>.json`, with the detailed and README tables beside it."""
        runs_dir = self.out / "runs"
        runs = {p.stem: json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json")) if "@" in p.stem}
        encoder = runs_dir / "text_encoder_cpu.json"
        merged = {
            "runs": runs,
            "text_encoder_cpu": json.loads(encoder.read_text()) if encoder.exists() else None,
            "caps_gib": CAPS_GIB,
            "command": " ".join(sys.argv),
            "budget_s": self.args.budget,
            "skipped": self.skipped,
        }
        gpus = [run["meta"].get("gpu", "") for run in runs.values() if "meta" in run]
        path = self.out / f"memory_profiles_{'tiny_cpu' if self.args.tiny else _gpu_name(gpus)}.json"
        path.write_text(json.dumps(merged, indent=1, default=str))
        tables = merge([path])
        path.with_suffix(".md").write_text(detail_table(tables) + "\n\nREADME table:\n\n" + readme_table(tables) + "\n")
        return tables


def _gpu_name(names: list[str]) -> str:
    for known in ("H200", "H100", "A100", "L40S", "L4"):
        if names and known in names[0]:
            return known.lower()
    return "gpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU, to check the script itself")
    parser.add_argument("--budget", type=float, default=450, help="seconds for the whole script (default 450)")
    parser.add_argument("--only", nargs="*", help="runs to do, as profile@cap (e.g. offload@24)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, their time and commands; run none")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    parser.add_argument("--cap", help=argparse.SUPPRESS)
    parser.add_argument("--cap-gib", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--stopped-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    prefer_expandable_segments()  # as workers run; the runs inherit it
    if args.child:
        sys.exit(main_child(args))
    runs = selected_runs(args.only)
    parent = Parent(args)
    if args.dry_run:
        parent.plan(runs)
        return
    merged = parent.run_all(runs)
    print(readme_table(merged), flush=True)
    if parent.skipped:
        print(f"not run for lack of time; run them in another call with --only {' '.join(parent.skipped)}")


if __name__ == "__main__":
    main()
