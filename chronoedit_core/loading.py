"""Loading a ChronoEdit checkpoint folder in diffusers layout, the same way for the 14B weights and the tiny model.

On a GPU the transformer and text encoder run in bfloat16 while the VAE and the CLIP image encoder stay in float32,
as in NVIDIA's examples; on a CPU everything is float32. Nothing is ever fetched from a model hub.

A memory profile decides where each component lands: straight on the GPU when the profile keeps it there as loaded,
in host memory when it is streamed in or first converted to FP8 (so a 24 GB card never holds the bf16 transformer).
The runner then finishes the placement (`chronoedit_core/placement.py`) once the LoRA adapters are loaded.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import AutoencoderKLWan, ChronoEditPipeline, ChronoEditTransformer3DModel
from transformers import CLIPVisionModel, UMT5EncoderModel

from chronoedit_core.errors import ModelLoadError
from chronoedit_core.profiles import MemoryProfile

logger = logging.getLogger(__name__)

COMPONENT_FOLDERS = ("transformer", "text_encoder", "tokenizer", "image_encoder", "image_processor", "vae", "scheduler")


@dataclass(frozen=True)
class Placement:
    """Where the pipeline runs and in which precision."""

    device: str
    dtype: torch.dtype
    """Transformer and text encoder precision; the VAE and image encoder always stay in float32."""

    @classmethod
    def resolve(cls, device: str = "auto") -> Placement:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return cls(device=device, dtype=dtype)


def check_layout(model_dir: Path) -> None:
    """Fail early, with the missing parts named, when `model_dir` is not a ChronoEdit checkpoint in diffusers layout."""
    if not (model_dir / "model_index.json").is_file():
        raise ModelLoadError(
            f"{model_dir} has no model_index.json; expected a ChronoEdit checkpoint in diffusers layout"
        )
    missing = [name for name in COMPONENT_FOLDERS if not (model_dir / name).is_dir()]
    if missing:
        raise ModelLoadError(f"{model_dir} lacks the component folders {', '.join(missing)}")


def load_pipeline(
    model_dir: Path,
    placement: Placement,
    profile: MemoryProfile | None = None,
    transformer_dir: Path | None = None,
) -> ChronoEditPipeline:
    """Load every component from `model_dir`: onto `placement.device`, or, where `profile` streams a component or
    converts its weights, into host memory. `transformer_dir` (a folder with the transformer's `config.json` and
    weights, e.g. a few-step distillation) replaces the base transformer. Local files only."""
    check_layout(model_dir)
    if transformer_dir is not None and not (transformer_dir / "config.json").is_file():
        raise ModelLoadError(f"{transformer_dir} has no config.json; expected a transformer folder in diffusers layout")
    diffusers.utils.logging.disable_progress_bar()  # progress bars would flood the worker logs
    transformers.utils.logging.disable_progress_bar()
    logger.info("loading ChronoEdit from %s on %s (%s)", model_dir, placement.device, placement.dtype)
    # On a GPU the weights go straight from disk to the device (no full copy in host memory first).
    # Measured on an H200 (bench/results/cold_start_h200.json) it is no faster than loading to host memory first:
    # both are bound by the disk's ~1 GB/s; but a worker group's ranks would each hold a 47 GB copy in host memory.
    # diffusers takes a device type only ("cuda"), which means the current device: a rank's `cuda:N` is made current.
    on_gpu = placement.device.startswith("cuda")
    homes = component_homes(profile) if on_gpu else {}
    classes = {
        "transformer": (ChronoEditTransformer3DModel, placement.dtype),
        "text_encoder": (UMT5EncoderModel, placement.dtype),
        "image_encoder": (CLIPVisionModel, torch.float32),
        "vae": (AutoencoderKLWan, torch.float32),
    }
    with torch.cuda.device(placement.device) if on_gpu else contextlib.nullcontext():
        components: dict[str, Any] = {}
        for name, (model_class, dtype) in classes.items():
            folder, subfolder = (
                (transformer_dir, None) if name == "transformer" and transformer_dir else (model_dir, name)
            )
            components[name] = model_class.from_pretrained(
                folder, subfolder=subfolder, dtype=dtype, local_files_only=True, device_map=homes.get(name)
            )
        pipe = ChronoEditPipeline.from_pretrained(model_dir, local_files_only=True, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe if on_gpu else pipe.to(placement.device)  # a no-op where the weights landed


def component_homes(profile: MemoryProfile | None) -> dict[str, str | None]:
    """`"cuda"` for the components that go straight to the GPU, None for those loaded into host memory first."""
    gpu = "cuda"
    if profile is None:
        return dict.fromkeys(("transformer", "text_encoder", "image_encoder", "vae"), gpu)
    return {
        "transformer": gpu if profile.transformer == "gpu" and profile.exact else None,
        "text_encoder": gpu if profile.text_encoder == "gpu" else None,
        "image_encoder": gpu if profile.image_encoder == "gpu" else None,
        "vae": gpu,
    }
