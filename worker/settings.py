"""The worker's settings: what it shares with the API (`CommonSettings`) plus where the model is and how to run it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from chronoedit_core.presets import TURBO
from chronoedit_core.profiles import NAMES as MEMORY_PROFILES
from chronoedit_core.sizing import SIZE_MULTIPLE, Size
from service.settings import CommonSettings


class WorkerSettings(CommonSettings):
    model_dir: Path | None = Field(None, description="ChronoEdit checkpoint folder in diffusers layout.")
    device: str = Field("auto", description="`auto`, `cpu`, `cuda` or `cuda:N`.")
    worker_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", description="Name in the registry."
    )
    queues: list[str] = Field(
        default_factory=lambda: ["edits", "batch"],
        description="Celery queues this worker consumes, the first first: a worker takes a message from a queue only "
        "when every queue before it is empty (`edits` before `batch` gives interactive edits priority over batch "
        "items; `reasoning` for temporal-reasoning jobs).",
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often the worker renews its registration and lease.")
    proc_alive_timeout_seconds: float = Field(
        600.0, gt=0, description="How long Celery waits for a child to load the model (DESIGN.md: above load time)."
    )
    loras: dict[str, Path] | None = Field(
        None,
        description="Adapter name -> LoRA file, loaded once at start (JSON). Default: every `*.safetensors` in "
        "`MODEL_DIR/loras`, under its file name (`distill`, `upscaler`, `paintbrush` are the names presets use).",
    )
    turbo_transformer: Path | None = Field(
        None,
        description="A few-step distilled ChronoEdit transformer (a folder with `config.json`, its safetensors and a "
        "`chronoedit-manifest.json`; relative to `MODEL_DIR` unless absolute). The worker loads it in place of the "
        "base transformer, shares the other components, serves `mode: turbo` edits only and consumes the `turbo` "
        "queue.",
    )
    verify_manifest: bool = Field(
        True, description="Check every weight file against `chronoedit-manifest.json` before becoming ready."
    )
    compile: bool | None = Field(
        None, description="Regional torch.compile of the transformer blocks, paid at start; default: on for CUDA."
    )
    compile_vae_size: str | None = Field(
        None,
        pattern=r"^[1-9][0-9]*x[1-9][0-9]*$",
        description="`WxH`, e.g. `2048x1536`: compile the VAE for this output size at start, for workers that see "
        "one size (catalog upscales). Its encode and decode run about 1.2x faster (0.4 s per 2048x1536 image on an "
        "H200) with the same pixels within 0.1%; each other size compiles anew at its first job (about a minute). "
        "Default: the VAE runs eagerly.",
    )
    attention_backend: str | None = Field(
        None, description="diffusers attention backend name; default: PyTorch SDPA (fastest measured on H200)."
    )
    fp8: bool = Field(
        False,
        description="Prepare FP8 weight copies beside the bf16 ones so jobs may ask for `fp8` (Hopper and Ada GPUs; "
        "the `resident` memory profile only: the FP8 profiles run every job in FP8).",
    )
    memory_profile: str = Field(
        "auto",
        description="What the worker keeps on its GPU (README, Memory profiles): `resident` (everything, bf16; "
        "fastest exact), `fp8-resident` (FP8 transformer, text encoder streamed in; 48 GB FP8 GPUs), `lean` (bf16 "
        "transformer, text encoder streamed in; 48 GB GPUs without FP8), `fp8-offload` / `offload` (transformer "
        "blocks and encoders streamed in from host memory; 24 GB GPUs), or `auto`: the fastest that fits the GPU's "
        "memory (or `CHRONOEDIT_GPU_MEMORY_GIB`), picked at start.",
    )
    gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="Cap on the GPU memory this worker uses (torch's per-process memory fraction), e.g. to share a "
        "GPU; `auto` and the size admission then count this instead of the GPU's total. Default: no cap.",
    )
    prompt_cache_size: int = Field(
        64,
        ge=0,
        description="How many prompts' text embeddings a worker keeps in host memory (4 MB each), so a repeated "
        "prompt skips the text encoder; the empty negative prompt and the upscale trigger are always kept.",
    )
    max_image_bytes: int = Field(100 * 1024 * 1024, description="Largest input the worker will decode.")
    max_image_pixels: int = Field(100_000_000, description="Largest input area the worker will decode.")
    group_queues: list[str] = Field(
        default_factory=lambda: ["reasoning"],
        description="Celery queues a worker group (`chronoedit worker --gpus N`) consumes; add `edits` to give it "
        "every kind of job.",
    )
    parallel_layout: dict[str, int] | None = Field(
        None,
        description='How a worker group splits each job (JSON), e.g. `{"guidance": 2, "ulysses": 2}` on 4 GPUs; '
        "the degrees (`guidance` 1 or 2, `ulysses`, `ring`) multiply to the number of ranks. Default: guidance 2 "
        "times Ulysses N/2 for an even number of GPUs, else Ulysses N.",
    )
    collective_timeout_seconds: float = Field(
        180.0,
        gt=0,
        description="A worker group whose ranks wait longer than this for each other (a rank died or hangs) exits "
        "non-zero, and its job is retried; above the longest single step.",
    )
    metrics_host: str = Field("127.0.0.1", description="Address the worker's Prometheus exporter binds to.")
    metrics_port: int = Field(
        9400,
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus exporter (plus the pool child's index); 0 picks a free port, "
        "published in the worker registry as `metrics_port`.",
    )

    @field_validator("memory_profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in MEMORY_PROFILES:
            raise ValueError(f"unknown memory profile {value!r}; use one of {', '.join(MEMORY_PROFILES)}")
        return value

    @model_validator(mode="after")
    def _turbo_queue(self) -> WorkerSettings:
        """A turbo worker serves only the `turbo` queue (its transformer runs no other mode), and only it does."""
        if self.turbo_transformer is not None:
            if "queues" not in self.model_fields_set:
                self.queues = [TURBO]
            elif self.queues != [TURBO]:
                raise ValueError(f"a worker with CHRONOEDIT_TURBO_TRANSFORMER consumes only the `{TURBO}` queue")
        elif TURBO in self.queues:
            raise ValueError(f"the `{TURBO}` queue is for workers with CHRONOEDIT_TURBO_TRANSFORMER")
        if TURBO in self.group_queues:
            raise ValueError(f"worker groups run the base transformer; the `{TURBO}` queue is for single-GPU workers")
        return self

    def turbo_dir(self) -> Path | None:
        """The turbo transformer's folder, resolved against the model folder."""
        if self.turbo_transformer is None or self.model_dir is None:
            return self.turbo_transformer
        return self.model_dir / self.turbo_transformer

    @field_validator("compile_vae_size")
    @classmethod
    def _on_the_grid(cls, value: str | None) -> str | None:
        if value is not None and any(int(side) % SIZE_MULTIPLE for side in value.split("x")):
            raise ValueError(f"both sides of the VAE's compile size must be multiples of {SIZE_MULTIPLE}")
        return value

    def vae_size(self) -> Size | None:
        """The size the VAE is compiled for, if any."""
        if self.compile_vae_size is None:
            return None
        width, height = (int(side) for side in self.compile_vae_size.split("x"))
        return Size(width, height)

    @field_validator("parallel_layout")
    @classmethod
    def _layout_degrees(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        unknown = set(value or {}) - {"guidance", "ulysses", "ring"}
        if unknown:
            raise ValueError(f"unknown layout degrees {sorted(unknown)}; use guidance, ulysses and ring")
        return value
