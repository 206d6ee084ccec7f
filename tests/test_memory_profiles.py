"""Memory profiles on the CPU: `auto`'s choice, the size admission per profile, FP8 weight storage, the placement of
each component, the prompt cache, and that the profiles' outputs are what they claim (equal to `resident`, or the
FP8 deviation) for the same seed, through the real loading path on the tiny model.

What needs a GPU (streams, pinned memory, real transfers, FP8 tensor cores, memory caps) is measured by
`bench/memory_profiles.py`."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chronoedit_core.fp8 import Fp8Linear, fp8_enabled, store_linears
from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.loras import LoraSet
from chronoedit_core.memory import TooLargeForDevice, largest_size, max_area, plan
from chronoedit_core.placement import ALIGN, pack, resolve_profile, streamed, weight_bytes
from chronoedit_core.presets import CACHED_PROMPTS
from chronoedit_core.profiles import (
    DECODE,
    DECODE_TILED,
    DENOISE,
    DENOISE_TILED,
    MARGIN,
    PROFILES,
    GiB,
    pick,
    profile_named,
)
from chronoedit_core.runner import EditRequest, EditRunner, RunnerOptions
from chronoedit_core.sizing import Size
from chronoedit_core.tiny import build_tiny_pipeline

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


@pytest.mark.parametrize(
    ("gpu", "total_gib", "fp8", "expected"),
    [
        ("H200", 139.8, True, "resident"),
        ("H100 80GB", 79.2, True, "resident"),
        ("A100 80GB", 79.1, False, "resident"),
        ("RTX 6000 Ada", 47.5, True, "fp8-resident"),
        ("L40S", 44.4, True, "fp8-resident"),
        ("A6000", 47.5, False, "lean"),
        ("A100 40GB", 39.4, False, "offload"),
        ("RTX 4090", 23.6, True, "fp8-offload"),
        ("L4", 22.0, True, "fp8-offload"),
        ("A10", 22.0, False, "offload"),
    ],
)
def test_auto_picks_the_fastest_profile_the_gpu_fits(gpu: str, total_gib: float, fp8: bool, expected: str) -> None:
    assert pick(int(total_gib * GiB), fp8).name == expected, gpu


def test_profiles_are_named_and_auto_keeps_everything_in_place_off_the_gpu() -> None:
    assert resolve_profile("auto", "cpu").name == "resident"
    assert resolve_profile("fp8-offload", "cpu") is PROFILES["fp8-offload"]
    with pytest.raises(ValueError, match="unknown memory profile 'tiny'"):
        profile_named("tiny")
    from pydantic import ValidationError

    from worker.settings import WorkerSettings

    with pytest.raises(ValidationError, match="unknown memory profile"):
        WorkerSettings(memory_profile="everything")
    assert [p.exact for p in PROFILES.values()] == [True, False, True, False, True]


def test_resident_admission_follows_the_measured_points() -> None:
    measured = json.loads((RESULTS / "memory_profile_h200.json").read_text())
    resident = PROFILES["resident"]
    for point in measured["points"]:
        budget = measured["total_bytes"] - point["resident_bytes"]
        width, height, frames = point["width"], point["height"], point["frames"]
        if "out_of_memory" in point:
            assert plan(resident, width, height, frames, budget).tiled, "out of memory untiled: planned tiled"
            continue
        assert plan(resident, width, height, frames, budget).tiled == [], "what ran is admitted, untiled"
        for stage, key in ((DENOISE, "denoise_peak_bytes"), (DECODE, "decode_peak_bytes")):
            estimate = stage.bytes(width * height, frames) / MARGIN
            assert abs(estimate - point[key]) / point[key] < 0.05, (point, key)


def test_tiled_admission_covers_the_measured_tiled_peaks() -> None:
    """Every tiled stage measured on the H100 (peak allocated above the idle worker) is within its estimate, and the
    estimate is at most 2.5 times the measurement (it adds the VAE tile working set and the transformer's activations,
    which peak one after the other)."""
    measured = json.loads((RESULTS / "memory_profiles_h100.json").read_text())["runs"]
    checked = 0
    for run in measured.values():
        profile, idle = PROFILES[run["profile"]], run["setup"]["gpu_allocated_idle_gib"] * GiB
        entries = [run[key] for key in ("fast_edit", "reasoning_probe") if key in run] + run.get("probes", [])
        for entry in entries:
            if not entry.get("ran"):
                continue
            area, frames = entry["size"][0] * entry["size"][1], entry["frames"]
            for stage, model, extra in (
                ("encode", DENOISE_TILED, profile.denoise_extra),
                ("decode", DECODE_TILED, 0),
            ):
                if stage not in entry["vae_tiling"]:
                    continue
                peak = entry["denoise" if stage == "encode" else "decode"]["peak_allocated_gib"] * GiB - idle
                estimate = model.bytes(area, frames, extra) / MARGIN
                assert peak <= estimate <= 2.5 * peak, (run["label"], entry["size"], frames, stage, peak / GiB)
                checked += 1
    assert checked >= 8


def test_admission_tiles_what_does_not_fit_untiled_and_names_the_largest_size() -> None:
    budget = 20 * GiB
    untiled_only = dataclasses.replace(PROFILES["resident"], tiling=False)
    with pytest.raises(TooLargeForDevice) as refused:
        plan(untiled_only, 1280, 720, 5, budget)
    assert refused.value.code == "too_large_for_device"
    largest = largest_size(1280, 720, max_area(untiled_only, 5, budget))
    assert largest is not None and (largest.width, largest.height) == (1200, 672)
    assert f"the largest it takes at this aspect ratio is {largest.width}x{largest.height}" in refused.value.message
    assert plan(untiled_only, 1200, 672, 5, budget).tiled == []
    with pytest.raises(TooLargeForDevice):
        plan(untiled_only, 1216, 688, 5, budget)
    for profile in PROFILES.values():
        chosen = plan(profile, 1280, 720, 5, budget)
        assert chosen.tiled == ["decode"], "the condition video still encodes untiled: the latents stay exact"
        assert plan(profile, 640, 368, 5, budget).tiled == [], "small sizes never tile"
        assert plan(profile, 2048, 1536, 5, budget).tiled == ["encode", "decode"]
    small = int(2.5 * GiB)
    with pytest.raises(TooLargeForDevice, match=r"with VAE tiling.*the largest it takes at this aspect ratio is"):
        plan(PROFILES["resident"], 1280, 720, 5, small)


def test_max_area_is_the_edge_of_what_admission_takes() -> None:
    for profile in PROFILES.values():
        for budget_gib, frames in ((20, 5), (20, 29), (40, 5), (6, 5)):
            budget = budget_gib * GiB
            area = max_area(profile, frames, budget)
            side = int(area**0.5) // 16 * 16
            plan(profile, side, side, frames, budget)  # a square within the area is admitted
            with pytest.raises(TooLargeForDevice):
                plan(profile, side + 32, side + 32, frames, budget)


def test_a_runner_names_the_largest_size_it_admits_at_an_aspect_ratio() -> None:
    class Capped(EditRunner):
        def max_area(self, frames: int) -> int | None:
            return 640 * 368 if frames == 5 else 0

    runner = Capped(build_tiny_pipeline())
    assert runner.fitting_size(640, 368) == Size(640, 368), "what is admitted stays as it is"
    assert runner.fitting_size(1280, 720) == Size(640, 352), "16:9, on the 16-pixel grid, within the area"
    assert runner.fitting_size(1280, 720, frames=29) is None
    assert EditRunner(build_tiny_pipeline()).fitting_size(4096, 4096) == Size(4096, 4096), "off the GPU: no cap"


def test_a_streamed_text_encoder_needs_room_to_stream_in() -> None:
    with pytest.raises(TooLargeForDevice, match="none fits"):
        plan(PROFILES["offload"], 64, 48, 5, 2 * GiB)
    assert max_area(PROFILES["offload"], 5, 2 * GiB) == 0
    assert max_area(PROFILES["resident"], 5, 2 * GiB) > 0, "a resident text encoder needs nothing more"


def test_fp8_storage_replaces_the_weights_and_frees_them() -> None:
    blocks = build_tiny_pipeline().transformer.blocks
    linears = {name: m for name, m in blocks.named_modules() if isinstance(m, torch.nn.Linear)}
    x = torch.randn(3, 32)
    with torch.no_grad():
        reference = {name: m(x) for name, m in linears.items() if m.in_features == 32}
    before = weight_bytes(blocks)["cpu"]
    freed = sum(m.weight.numel() * 4 - m.weight.numel() - m.out_features * 4 for m in linears.values())
    assert store_linears(blocks, compute=torch.device("cpu"), home="cpu") == len(linears)
    assert store_linears(blocks, compute=torch.device("cpu"), home="cpu") == 0, "stored layers are not stored again"
    assert weight_bytes(blocks)["cpu"] == before - freed, "float32 weights out, FP8 weights and per-channel scales in"
    stored = dict(blocks.named_modules())
    for name, expected in reference.items():
        layer = stored[name]
        assert isinstance(layer, Fp8Linear) and layer.weight is None and layer.weight_fp8.dtype == torch.float8_e4m3fn
        with torch.no_grad(), fp8_enabled(blocks, False):  # no bf16 path is left to switch back to
            approximate = layer(x)
        assert 0 < float((approximate - expected).norm() / expected.norm()) < 0.1


def test_fp8_weights_are_parameters_not_buffers() -> None:
    """diffusers' streamed group offloading (the CUDA side-stream path) moves a block's parameters back to host memory
    after it ran but leaves the block's buffers on the GPU; FP8 weights held as buffers stayed resident block by block
    (measured: 15.5 GiB of a 21.5 GiB cap under `fp8-offload`)."""
    blocks = build_tiny_pipeline().transformer.blocks
    store_linears(blocks, compute=torch.device("cpu"), home="cpu")
    layers = [m for m in blocks.modules() if isinstance(m, Fp8Linear)]
    assert layers
    for layer in layers:
        held = {id(t) for t in layer.parameters()}
        assert id(layer.weight_fp8) in held and id(layer.weight_scale) in held
        assert not list(layer.buffers())
        assert not layer.weight_fp8.requires_grad


def test_fp8_storage_keeps_lora_adapters_working() -> None:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    model = inject_adapter_in_model(LoraConfig(r=4, target_modules=["0", "2"], init_lora_weights=False), model)
    x = torch.randn(3, 32)
    with torch.no_grad():
        with_adapter = model(x)
        assert store_linears(model, compute=torch.device("cpu"), home="cpu") == 2
        fp8_with = model(x)
        for layer in model.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.enable_adapters(False)
        fp8_without = model(x)
    assert float((fp8_with - with_adapter).norm() / with_adapter.norm()) < 0.1, "the adapters still add their part"
    assert float((fp8_with - fp8_without).norm() / fp8_with.norm()) > 0.1, "and switching them off still works"


def test_pinned_buffers_pack_every_tensor_without_overlap() -> None:
    sizes = [141_557_760, 52_428_800, 10_240, 2_100_000_000, 52_428_800, 1, 0]
    slots, buffers = pack(sizes, arena=1 << 28)
    unit = 1 << 31  # the largest tensor sets the buffer size: the next power of two above it
    assert all(size <= unit for size in buffers)
    spans: dict[int, list[tuple[int, int]]] = {}
    for size, (buffer, offset) in zip(sizes, slots, strict=True):
        assert offset % ALIGN == 0 and offset + size <= buffers[buffer]
        spans.setdefault(buffer, []).append((offset, offset + size))
    for ranges in spans.values():
        ranges.sort()
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(ranges))
    assert sum(buffers) < sum(sizes) * 1.01 + ALIGN * len(sizes), "packed, not one power of two per tensor"


def test_prompt_cache_skips_the_text_encoder_for_a_known_prompt() -> None:
    from chronoedit_core.prompts import PromptCache

    pipe = build_tiny_pipeline()
    cache = PromptCache(pipe, capacity=1, keep=CACHED_PROMPTS)
    cpu = torch.device("cpu")
    fresh = pipe._get_t5_prompt_embeds(prompt="make it red", device=cpu)
    first = cache.embeds("make it red", cpu)
    assert torch.equal(cache.embeds("make it red", cpu), fresh) and torch.equal(first, fresh)
    assert (cache.hits, cache.misses) == (1, 1)
    cache.preload(CACHED_PROMPTS, cpu)
    cache.embeds("make it blue", cpu)
    assert "make it red" not in cache and "make it blue" in cache, "least recently used out, within capacity"
    assert all(text in cache for text in CACHED_PROMPTS), "kept prompts never leave"


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8))


def run_profile(tiny_model: Path, name: str, image: Image.Image) -> tuple[EditRunner, dict[str, np.ndarray]]:
    """Load the tiny checkpoint the way a worker does under profile `name`, and run a guided edit with and
    without an adapter active."""
    profile = PROFILES[name]
    pipe = load_pipeline(tiny_model, Placement.resolve("cpu"), profile)
    loras = LoraSet(pipe, {path.stem: path for path in (tiny_model / "loras").glob("*.safetensors")})
    runner = EditRunner(pipe, RunnerOptions(profile=profile))
    request = EditRequest(prompt="The user wants a red hat.", width=64, height=48, seed=7, num_inference_steps=3)
    outputs = {}
    for adapters in ((), ("upscaler",)):
        loras.activate(adapters)
        outputs["+".join(adapters)] = np.stack([np.asarray(f) for f in runner.run(request, image).frames]).astype(int)
    assert runner.tiled == []
    return runner, outputs


@pytest.fixture(scope="module")
def resident_outputs(tiny_model: Path, image: Image.Image) -> dict[str, np.ndarray]:
    return run_profile(tiny_model, "resident", image)[1]


@pytest.mark.parametrize("name", ["lean", "offload"])
def test_exact_profiles_equal_resident_for_the_same_seed(
    tiny_model: Path, image: Image.Image, resident_outputs: dict[str, np.ndarray], name: str
) -> None:
    runner, outputs = run_profile(tiny_model, name, image)
    pipe = runner.pipe
    assert streamed(pipe.text_encoder) and not streamed(pipe.vae)
    assert streamed(pipe.transformer) == (name == "offload") == streamed(pipe.image_encoder)
    for adapters, expected in resident_outputs.items():
        assert np.array_equal(outputs[adapters], expected), adapters
    assert not np.array_equal(outputs[""], outputs["upscaler"]), "the adapter is active under the hooks"


def test_fp8_profiles_store_fp8_weights_and_deviate_alike(
    tiny_model: Path, image: Image.Image, resident_outputs: dict[str, np.ndarray]
) -> None:
    results = {}
    for name in ("fp8-resident", "fp8-offload"):
        runner, results[name] = run_profile(tiny_model, name, image)
        layers = [m for m in runner.pipe.transformer.blocks.modules() if isinstance(m, Fp8Linear)]
        assert layers and all(layer.stored and layer.weight is None for layer in layers)
        assert streamed(runner.pipe.transformer) == (name == "fp8-offload")
        assert runner.fp8_available, "jobs asking for fp8 are served: every job runs FP8 here"
    for adapters, expected in resident_outputs.items():
        assert np.array_equal(results["fp8-resident"][adapters], results["fp8-offload"][adapters])
        assert np.abs(results["fp8-resident"][adapters] - expected).max() > 0, "FP8 is not the exact path"


def test_fp8_copies_belong_to_the_resident_profile(tiny_model: Path) -> None:
    from chronoedit_core.errors import ChronoEditError

    pipe = load_pipeline(tiny_model, Placement.resolve("cpu"), PROFILES["lean"])
    with pytest.raises(ChronoEditError, match="use fp8-resident or fp8-offload"):
        EditRunner(pipe, RunnerOptions(profile=PROFILES["lean"], fp8=True))
    exact = EditRunner(load_pipeline(tiny_model, Placement.resolve("cpu")), RunnerOptions())
    with pytest.raises(ChronoEditError) as refused:
        exact.check(dataclasses.replace(EditRequest(prompt="x", width=64, height=48, seed=0), fp8=True))
    assert refused.value.code == "fp8_unavailable"
