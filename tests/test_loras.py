"""LoRA adapters loaded once and switched per job, and the presets that choose them (tiny model, CPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from diffusers import ChronoEditPipeline
from PIL import Image

from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.loras import LoraError, LoraSet
from chronoedit_core.presets import PRESETS, SKETCH_TRIGGER, UPSCALE_TRIGGER, preset
from chronoedit_core.runner import EditRequest, EditRunner
from chronoedit_core.tiny import write_tiny_lora
from tests.reference import stock_frames


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    return {
        "distill": write_tiny_lora(folder / "distill.safetensors", seed=1, key_format="diffusers"),
        "paintbrush": write_tiny_lora(folder / "paintbrush.safetensors", seed=2, key_format="wan"),
    }


@pytest.fixture(scope="module")
def served(tiny_model: Path, lora_files: dict[str, Path]) -> tuple[EditRunner, LoraSet]:
    pipe = load_pipeline(tiny_model, Placement.resolve("cpu"))
    return EditRunner(pipe), LoraSet(pipe, lora_files)


IMAGE = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
REQUEST = EditRequest(prompt="The user wants a red hat.", width=64, height=48, seed=3, num_inference_steps=3)


def render(served: tuple[EditRunner, LoraSet], adapters: list[str]) -> np.ndarray:
    runner, loras = served
    loras.activate(adapters)
    return np.asarray(runner.run(REQUEST, IMAGE).image).astype(int)


def base_weights(pipe: ChronoEditPipeline) -> dict[str, tuple[int, float]]:
    """Each base parameter's storage address and sum, under its name without peft's `base_layer.`."""
    return {
        name.replace("base_layer.", ""): (param.data_ptr(), float(param.sum()))
        for name, param in pipe.transformer.named_parameters()
        if "lora_" not in name
    }


def test_each_format_changes_the_output(served: tuple[EditRunner, LoraSet]) -> None:
    base = render(served, [])
    assert np.abs(render(served, ["distill"]) - base).max() > 2, "diffusers-format LoRA"
    assert np.abs(render(served, ["paintbrush"]) - base).max() > 2, "original Wan-format LoRA"


def test_switching_back_and_forth_reproduces_pixels_without_reloading(served: tuple[EditRunner, LoraSet]) -> None:
    runner, _ = served
    weights = base_weights(runner.pipe)
    first_edit = render(served, [])
    sketch = render(served, ["paintbrush", "distill"])
    second_edit = render(served, [])
    fast = render(served, ["distill"])
    assert np.array_equal(first_edit, second_edit), "edit -> sketch -> edit gives the first edit's pixels"
    assert np.abs(sketch - first_edit).max() > 2 and np.abs(fast - sketch).max() > 2
    assert base_weights(runner.pipe) == weights, "base weights are the same tensors with the same values"


def test_output_with_adapters_equals_stock_pipeline_with_same_adapters(
    served: tuple[EditRunner, LoraSet], tiny_model: Path, lora_files: dict[str, Path]
) -> None:
    ours = render(served, ["paintbrush", "distill"])
    stock = ChronoEditPipeline.from_pretrained(tiny_model, local_files_only=True)
    stock.set_progress_bar_config(disable=True)
    for name, path in lora_files.items():
        stock.load_lora_weights(str(path), adapter_name=name)
    stock.set_adapters(["paintbrush", "distill"], adapter_weights=[1.0, 1.0])
    expected = stock_frames(tiny_model, REQUEST, IMAGE, pipe=stock)[-1]
    assert np.abs(ours - expected.astype(int)).max() <= 2


def test_unknown_adapter_is_a_clear_error(served: tuple[EditRunner, LoraSet]) -> None:
    with pytest.raises(LoraError, match="no LoRA upscaler") as error:
        served[1].activate(["upscaler"])
    assert error.value.code == "lora_unavailable"


def test_presets_are_the_official_values() -> None:
    assert preset("edit") == PRESETS[("edit", "standard")]
    fast = preset("edit", "fast")
    assert (fast.num_inference_steps, fast.guidance_scale, fast.flow_shift, fast.loras) == (8, 1.0, 2.0, ("distill",))
    assert preset("sketch").loras == ("paintbrush", "distill")
    assert preset("sketch").prompt("a crown") == SKETCH_TRIGGER.format(prompt="a crown")
    assert preset("upscale").prompt("") == UPSCALE_TRIGGER
    assert preset("upscale", "fast").loras == ("upscaler", "distill")
    assert dataclasses.replace(preset("edit"), num_inference_steps=10).num_inference_steps == 10
    turbo = preset("edit", "turbo")
    assert (turbo.num_inference_steps, turbo.guidance_scale, turbo.flow_shift, turbo.loras) == (4, 1.0, 5.0, ())
    with pytest.raises(ValueError, match="no preset"):
        preset("upscale", "turbo")
