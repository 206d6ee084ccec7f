"""What `bench/memory_profiles.py` measures in each run (one memory profile under one memory cap), most important
first, each within what is left of the run's time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.gpu_bench import deviation as frames_deviation
from chronoedit_core.memory import Plan, TooLargeForDevice

if TYPE_CHECKING:
    from bench.memory_profiles import Run

STANDARD_TIMED_STEPS = 4
"""The standard edit's steps actually run; its 50-step time is extrapolated from their mean (3 step intervals)."""
LADDER = [(1280, 720), (1600, 896), (1920, 1088), (2048, 1152), (2048, 1536)]
"""Output sizes probed, by area; 2048 is the API's longest side and 2048x1536 its largest area by default."""
TINY_LADDER = [(64, 48), (96, 64), (128, 96)]


@dataclass(frozen=True)
class Case:
    name: str
    steps: int
    guidance: float
    flow_shift: float
    frames: int = 5


FAST = Case("fast", 8, 1.0, 2.0)
STANDARD = Case("standard", 50, 5.0, 5.0)
EQUALITY = Case("equality", 2, 5.0, 5.0)
PROBE = Case("probe", 1, 1.0, 2.0)
REASONING = Case("reasoning", 1, 1.0, 2.0, frames=29)


def measure_all(run: Run) -> None:
    """Every measurement of one run in order of importance; one that fails or would not finish in the run's time
    is recorded as such, and the next one still runs. The first (the fast edit) may use the grace before the run is
    stopped: a run whose setup took its whole share still measures it."""
    for index, (name, step, needs) in enumerate(STEPS):
        seconds, left = needs(run), run.left(until_stopped=index == 0)
        if left < seconds:
            run.rec.note("skipped", name, f"{left:.0f} s left of the run's time, about {seconds:.0f} s needed")
            continue
        started = time.perf_counter()
        try:
            step(run)
        except Exception as exc:  # one failed measurement must not cost the others
            run.rec.note("errors", name, repr(exc)[:600])
        finally:
            run.rec.note("timings", name, round(time.perf_counter() - started, 2))
            run.gpu.release()


def fast_edit(run: Run) -> None:
    entry = run.attempt(run.request(FAST))
    run.compare("fast", entry)
    run.rec.put("fast_edit", entry)


def standard_edit(run: Run) -> None:
    """The first steps of the standard edit, extrapolated to 50 with the fast edit's decoding time."""
    entry = run.attempt(run.request(STANDARD), stop_after=STANDARD_TIMED_STEPS)
    decode_s = run.rec.data.get("fast_edit", {}).get("decode_s")
    if "step_s" in entry and decode_s is not None:
        entry["s_extrapolated"] = entry["before_first_step_s"] + STANDARD.steps * entry["step_s"] + decode_s
        entry["extrapolated_from_steps"] = STANDARD_TIMED_STEPS
    run.rec.put("standard_edit", entry)


def equality(run: Run) -> None:
    """A small guided edit no profile tiles: `lean` and `offload` should equal `resident`; FP8 shows its deviation."""
    entry = run.attempt(run.request(EQUALITY, (64, 48) if run.tiny else (640, 368)))
    run.compare("equality", entry)
    run.rec.put("equality", entry)


def prompt_encoding(run: Run) -> None:
    """A new prompt through the text encoder (streamed in, or resident) against the same prompt from the cache."""
    runner = run.runner
    timings = {}
    for outcome in ("miss", "hit"):
        run.gpu.sync()
        started = time.perf_counter()
        runner.prompts.embeds("A prompt no job has used before.", runner.device)
        run.gpu.sync()
        timings[f"{outcome}_s"] = time.perf_counter() - started
    run.rec.put("prompt_encoding", timings)


def probes(run: Run) -> None:
    """The largest ladder size the admission takes, run (one step and the decoding); if it ran, the next size up,
    run even though the admission refuses it (tiled where the profile tiles) to show the admission's margin; if it
    did not, smaller sizes until one runs."""
    ladder = TINY_LADDER if run.tiny else LADDER
    admitted = [size for size in ladder if run.admits(size)]
    fitting = run.runner.fitting_size(*ladder[0])
    start = admitted[-1] if admitted else (fitting.width, fitting.height) if fitting else ladder[0]
    results = [_probe_size(run, start)]
    run.rec.put("probes", results)
    if results[0].get("ran"):
        following = [size for size in ladder if _area(size) > _area(start)][:1]
    else:
        following = [size for size in reversed(ladder) if _area(size) < _area(start)]
    for size in following:
        if run.left() < probe_needs(run):
            run.rec.note("skipped", f"probe {size[0]}x{size[1]}", f"{run.left():.0f} s left of the run's time")
            return
        results.append(_probe_size(run, size))
        run.rec.put("probes", results)
        if results[-1].get("ran"):
            return


def _probe_size(run: Run, size: tuple[int, int]) -> dict[str, Any]:
    return probe(run, run.request(PROBE, size))


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def reasoning(run: Run) -> None:
    """One 29-frame step at 1280x720 (or the largest 16:9 size admitted), and its decoding."""
    fitting = run.runner.fitting_size(*run.size, frames=REASONING.frames)
    size = (fitting.width, fitting.height) if fitting else run.size
    run.rec.put("reasoning_probe", probe(run, run.request(REASONING, size)))


def probe(run: Run, request: Any) -> dict[str, Any]:
    """The admission's verdict on `request`, then the request run anyway (forced past a refusal)."""
    verdict: dict[str, Any] = {}
    try:
        verdict["admitted_plan"] = run.runner.plan(request).tiled
    except TooLargeForDevice as refused:
        verdict["refused"] = refused.message
        tiling = run.profile.tiling
        run.runner.forced_plan = Plan(tile_encode=tiling, tile_decode=tiling)
    try:
        entry = run.attempt(request)
    finally:
        run.runner.forced_plan = None
    entry.pop("_latents", None), entry.pop("_frames", None)
    return {**verdict, **entry}


def deviation(
    latents: torch.Tensor, frames: np.ndarray, ref_latents: torch.Tensor, ref_frames: np.ndarray
) -> dict[str, float]:
    """Relative L2 of the final latents, and the frames' differences (out of 255) from the reference's."""
    rel = float((latents - ref_latents).norm() / ref_latents.norm().clamp(min=1e-12))
    return {"latents_rel_l2": rel, **frames_deviation(frames, ref_frames)}


def text_encoder_on_cpu(tiny: bool, layers: int = 2) -> dict[str, Any]:
    """UMT5-XXL's forward on the host CPU in bf16, timed over `layers` of its 24 layers at 512 tokens and
    extrapolated: what a worker would pay per new prompt with the text encoder on the CPU instead of streamed in."""
    from transformers import UMT5Config, UMT5EncoderModel

    width = {"d_model": 64, "d_kv": 8, "d_ff": 128, "num_heads": 8} if tiny else {}
    config = UMT5Config(
        vocab_size=1024,
        d_model=width.get("d_model", 4096),
        d_kv=width.get("d_kv", 64),
        d_ff=width.get("d_ff", 10240),
        num_layers=layers,
        num_heads=width.get("num_heads", 64),
        feed_forward_proj="gated-gelu",
    )
    model = UMT5EncoderModel(config).to(torch.bfloat16).eval()  # type: ignore[arg-type]  # transformers' typing
    tokens = torch.randint(0, 1024, (1, 512))
    with torch.no_grad():
        model(tokens)
        started = time.perf_counter()
        model(tokens)
    seconds = time.perf_counter() - started
    return {
        "threads": torch.get_num_threads(),
        "layers_timed": layers,
        "s_timed": seconds,
        "s_24_layers_extrapolated": seconds * 24 / layers,
    }


def _fast_s(run: Run, default: float) -> float:
    """The fast edit's seconds in this run, the yardstick for what the later measurements need."""
    seconds = run.rec.data.get("fast_edit", {}).get("s")
    return float(seconds) if seconds is not None else default


def probe_needs(run: Run) -> float:
    return 2.0 if run.tiny else max(10.0, 1.5 * _fast_s(run, 15.0))


STEPS: list[tuple[str, Callable[[Run], None], Callable[[Run], float]]] = [
    ("fast_edit", fast_edit, lambda run: 2.0 if run.tiny else 15.0),
    ("standard_edit", standard_edit, lambda run: 2.0 if run.tiny else 1.3 * _fast_s(run, 15.0)),
    ("equality", equality, lambda run: 2.0 if run.tiny else 8.0),
    ("prompt_encoding", prompt_encoding, lambda run: 1.0 if run.tiny else 4.0),
    ("probes", probes, probe_needs),
    ("reasoning_probe", reasoning, lambda run: 2.0 if run.tiny else max(15.0, 2 * _fast_s(run, 15.0))),
]
"""(name, measurement, seconds it needs at least): a measurement that would not finish in the run's time is
skipped, so the run ends on time with what it measured."""
