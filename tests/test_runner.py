"""The project's denoising loop against the stock diffusers pipeline on the tiny model (CPU, float32)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chronoedit_core.errors import ChronoEditError
from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.runner import EditRequest, EditRunner, EditStopped
from tests.reference import stock_frames


@pytest.fixture(scope="module")
def runner(tiny_model: Path) -> EditRunner:
    return EditRunner(load_pipeline(tiny_model, Placement.resolve("cpu")))


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))


BASE = EditRequest(prompt="The user wants to make it red.", width=64, height=48, seed=5, num_inference_steps=4)
CASES = {
    "cfg": BASE,
    "no_cfg_flow_shift_2": dataclasses.replace(BASE, guidance_scale=1.0, flow_shift=2.0),
    "negative_prompt": dataclasses.replace(BASE, negative_prompt="blurry", guidance_scale=3.0),
    "reasoning_all_steps": dataclasses.replace(BASE, temporal_reasoning=True, reasoning_steps=4),
    "reasoning_dropped_after_2": dataclasses.replace(BASE, temporal_reasoning=True, reasoning_steps=2),
    "guidance_for_2_of_4_steps": dataclasses.replace(BASE, guidance_steps=2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_frame_equals_stock(runner: EditRunner, tiny_model: Path, image: Image.Image, name: str) -> None:
    request = CASES[name]
    ours = np.stack([np.asarray(f) for f in runner.run(request, image).frames])
    expected = stock_frames(tiny_model, request, image)
    assert ours.shape == expected.shape
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 2


def test_reasoning_renders_29_frames(runner: EditRunner, image: Image.Image) -> None:
    assert len(runner.run(CASES["reasoning_all_steps"], image).frames) == 29
    assert len(runner.run(CASES["reasoning_dropped_after_2"], image).frames) == 5


def test_step_cache_is_opt_in_and_leaves_no_trace(runner: EditRunner, image: Image.Image) -> None:
    request = dataclasses.replace(BASE, num_inference_steps=8)
    exact = np.asarray(runner.run(request, image).image).astype(int)
    cached = np.asarray(runner.run(dataclasses.replace(request, step_cache_threshold=0.5), image).image).astype(int)
    again = np.asarray(runner.run(request, image).image).astype(int)
    assert np.abs(exact - cached).max() > 2, "a generous threshold skips steps and changes the output"
    assert np.array_equal(exact, again), "after a cached job the exact mode is exact again"


def test_limited_guidance_skips_the_unconditional_passes_it_says(runner: EditRunner, image: Image.Image) -> None:
    passes: list[int] = []
    hook = runner.pipe.transformer.register_forward_hook(lambda *_: passes.append(1))
    try:
        full = np.asarray(runner.run(BASE, image).image).astype(int)
        full_passes, passes[:] = len(passes), []
        limited = np.asarray(runner.run(dataclasses.replace(BASE, guidance_steps=1), image).image).astype(int)
    finally:
        hook.remove()
    assert (full_passes, len(passes)) == (8, 5), "4 steps: 2 passes each, or 2 for the first and 1 for the others"
    assert np.abs(full - limited).max() > 2


def test_step_callback_can_stop_between_steps(runner: EditRunner, image: Image.Image) -> None:
    seen: list[int] = []

    def stop_after_two(step: int, total: int) -> bool:
        seen.append(step)
        return step < 2

    with pytest.raises(EditStopped) as stopped:
        runner.run(BASE, image, on_step=stop_after_two)
    assert stopped.value.steps_done == 2 and seen == [1, 2]


def test_fp8_needs_a_worker_prepared_for_it(runner: EditRunner, image: Image.Image) -> None:
    with pytest.raises(ChronoEditError) as error:
        runner.run(dataclasses.replace(BASE, fp8=True), image)
    assert error.value.code == "fp8_unavailable"


def test_fp8_wrapping_leaves_lora_layers_working() -> None:
    """FP8 goes under a LoRA's base layer, never into its adapter matrices; off, the layer is unchanged."""
    from peft import LoraConfig, inject_adapter_in_model
    from torch import nn

    from chronoedit_core.fp8 import Fp8Linear, fp8_enabled, wrap_linears

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    model = inject_adapter_in_model(LoraConfig(r=4, target_modules=["0", "2"], init_lora_weights=False), model)
    x = torch.randn(3, 32)
    reference = model(x)
    assert wrap_linears(model) == 2
    assert not any(isinstance(m, Fp8Linear) for name, m in model.named_modules() if "lora_" in name)
    assert torch.equal(model(x), reference)
    with fp8_enabled(model, True):
        approximate = model(x)
    assert 0 < float((approximate - reference).norm() / reference.norm()) < 0.1
