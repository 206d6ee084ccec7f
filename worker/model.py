"""How this worker's model is set up from its settings: the LoRA files, the memory profile (within the GPU memory
cap) and the runner's options. Every rank of a worker group sets up the same way."""

from __future__ import annotations

from pathlib import Path

from chronoedit_core.loading import Placement
from chronoedit_core.memory import GiB, limit_memory
from chronoedit_core.placement import resolve_profile
from chronoedit_core.profiles import MemoryProfile
from chronoedit_core.runner import RunnerOptions
from worker.settings import WorkerSettings


def lora_files(settings: WorkerSettings, model_dir: Path) -> dict[str, Path]:
    """The adapters to load: the configured map, else every `loras/*.safetensors` of the model folder by file name."""
    if settings.loras is not None:
        return dict(settings.loras)
    return {path.stem: path for path in sorted((model_dir / "loras").glob("*.safetensors"))}


def memory_profile(settings: WorkerSettings, placement: Placement) -> MemoryProfile:
    """The worker's memory profile on `placement`, within its GPU memory cap (applied here, before anything is
    loaded, so `auto` and the admission see it)."""
    if settings.gpu_memory_gib is not None and placement.device.startswith("cuda"):
        limit_memory(placement.device, int(settings.gpu_memory_gib * GiB))
    return resolve_profile(settings.memory_profile, placement.device)


def runner_options(settings: WorkerSettings, placement: Placement) -> RunnerOptions:
    """The worker's speed and memory options for a runner on `placement` (every rank of a worker group uses the
    same)."""
    compile_blocks = settings.compile
    if compile_blocks is None:
        compile_blocks = placement.device.startswith("cuda")
    # dynamic: one compiled graph serves every image size and frame count (measured on an H200: 0.4% slower per
    # step than a graph specialised to 1280x720, and no 7 s recompile at the first new size; compile_shapes_h200)
    return RunnerOptions(
        compile=compile_blocks,
        compile_dynamic=True,
        compile_vae=settings.compile_vae_size is not None,
        attention_backend=settings.attention_backend,
        fp8=settings.fp8,
        profile=memory_profile(settings, placement),
        device=placement.device,
        prompt_cache=settings.prompt_cache_size,
    )
