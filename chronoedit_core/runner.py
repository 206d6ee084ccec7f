"""Running one edit on a loaded pipeline, with a denoising loop this project owns.

The loop re-uses the stock `ChronoEditPipeline`'s own stages (`_get_t5_prompt_embeds`, which its `encode_prompt`
calls once per text, `encode_image`, `prepare_latents`, its video processor, scheduler and VAE) and performs the same
operations in the same order, so its output equals the stock pipeline's for the same seed (tests check it on CPU).
Owning the loop is what allows:
- step caching: each transformer call runs inside `cache_context("cond" | "uncond")`, which diffusers' cache hooks
  (FirstBlockCache) need and the stock pipeline never opens;
- speed options applied once at worker start (`RunnerOptions`): regional `torch.compile` of the transformer blocks,
  the attention backend;
- stopping between steps (`StepCallback` returning False) instead of spinning through the remaining steps;
- running a step's guidance passes elsewhere: the loop asks its `GuidanceExecutor` for the noise prediction, so a
  worker group can run the conditional and unconditional passes on two GPUs at once (`chronoedit_core/guidance.py`);
- running within a memory profile (`chronoedit_core/profiles.py`): FP8-stored weights, components streamed onto the
  GPU, text embeddings cached by prompt, and the VAE tiled for the stages that would not fit otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from diffusers import ChronoEditPipeline, FirstBlockCacheConfig, UniPCMultistepScheduler
from PIL import Image

from chronoedit_core import memory
from chronoedit_core.errors import ChronoEditError
from chronoedit_core.fp8 import fp8_enabled, wrap_linears
from chronoedit_core.fp8 import supported as fp8_supported
from chronoedit_core.guidance import Branch, GuidanceExecutor, SequentialGuidance
from chronoedit_core.placement import place, store_fp8
from chronoedit_core.presets import CACHED_PROMPTS
from chronoedit_core.profiles import PROFILES, MemoryProfile
from chronoedit_core.prompts import PromptCache
from chronoedit_core.sizing import Size

EDIT_FRAMES = 5
"""Without temporal reasoning the pipeline always renders 5 frames (2 latent frames): input ... edit."""

REASONING_FRAMES = 29

StepCallback = Callable[[int, int], bool | None]
"""Called after each denoising step with (steps done, total steps); returning False stops the run."""


class EditStopped(ChronoEditError):
    """The step callback asked to stop; `steps_done` steps ran."""

    code = "stopped"

    def __init__(self, steps_done: int) -> None:
        super().__init__(f"stopped after {steps_done} steps")
        self.steps_done = steps_done


@dataclass(frozen=True)
class EditRequest:
    """Everything that determines an edit's pixels."""

    prompt: str
    width: int
    height: int
    seed: int
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    flow_shift: float = 5.0
    negative_prompt: str = ""
    temporal_reasoning: bool = False
    reasoning_steps: int | None = None
    """With temporal reasoning: steps before the reasoning frames are dropped (default: all steps)."""
    guidance_steps: int | None = None
    """Opt-in limited guidance: classifier-free guidance for the first `guidance_steps` steps only, the conditional
    pass alone after them (low noise, where guidance adds little). Faster, and no longer the exact result."""
    step_cache_threshold: float | None = None
    """Opt-in FirstBlockCache: skip the transformer's tail when the first block's residual changed less than this.
    Faster, and no longer the exact result."""
    fp8: bool = False
    """Opt-in FP8 matrix multiplies in the transformer blocks (the worker must have `RunnerOptions.fp8`)."""

    @property
    def num_frames(self) -> int:
        return REASONING_FRAMES if self.temporal_reasoning else EDIT_FRAMES


@dataclass(frozen=True)
class RunnerOptions:
    """Speed options applied once, when the runner is built (a worker setting, not per job)."""

    compile: bool = False
    """Regional `torch.compile` of the repeated transformer blocks; paid once at warm-up."""
    compile_mode: str | None = None
    """`torch.compile` mode, e.g. `max-autotune-no-cudagraphs`; None is the default mode."""
    compile_dynamic: bool | None = None
    """`torch.compile(dynamic=...)`: True compiles one graph for every token count (every image size and frame
    count); None lets dynamo specialise on the first shape and go dynamic when a second one comes."""
    compile_vae: bool = False
    """The VAE's residual and attention blocks compiled with one graph per image size (`compile_vae`): for workers
    that see one size, since every new size compiles for about a minute."""
    attention_backend: str | None = None
    """A diffusers attention backend name (e.g. `_native_cudnn`); None keeps the default (PyTorch SDPA)."""
    fp8: bool = False
    """Prepare FP8 copies of the blocks' linear weights so jobs may ask for FP8 matrix multiplies (`resident` only)."""
    profile: MemoryProfile = PROFILES["resident"]
    """What stays on the GPU and in which weight format; applied when the runner is built."""
    device: str | None = None
    """Where the pipeline runs (streamed components are copied there); None: where the transformer is."""
    prompt_cache: int = 64
    """How many prompts' text embeddings to keep (besides the empty negative prompt and the trigger prompts)."""


@dataclass(frozen=True)
class EditResult:
    frames: list[Image.Image]
    """Every frame of the rendered video, first (the input) to last (the edit)."""

    @property
    def image(self) -> Image.Image:
        return self.frames[-1]


def guidance_at(request: EditRequest, step: int) -> float:
    """The guidance scale of step `step` (0-based): the request's while limited guidance lasts, then 1 (none)."""
    if request.guidance_steps is not None and step >= request.guidance_steps:
        return 1.0
    return request.guidance_scale


def make_scheduler(pipe: ChronoEditPipeline, flow_shift: float) -> UniPCMultistepScheduler:
    """UniPC in flow-prediction mode at `flow_shift`, the scheduler every ChronoEdit mode works with."""
    return UniPCMultistepScheduler.from_config(
        pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
    )


def prepare_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to the output size with PIL's bicubic filter, as the official scripts do before calling the pipeline."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def frames_to_images(frames: np.ndarray) -> list[Image.Image]:
    """Float frames in [0, 1] to 8-bit images, truncating like the official scripts (`(x * 255).clip().astype`)."""
    return [Image.fromarray((frame * 255).clip(0, 255).astype("uint8")) for frame in frames]


class EditRunner:
    """Runs edits on one resident pipeline, one at a time."""

    def __init__(
        self, pipe: ChronoEditPipeline, options: RunnerOptions | None = None, guidance: GuidanceExecutor | None = None
    ) -> None:
        self.pipe = pipe
        self.options = options or RunnerOptions()
        self.guidance: GuidanceExecutor = guidance or SequentialGuidance()
        """Runs each step's transformer passes: both here, or one per rank of a worker group (`SplitGuidance`)."""
        self.profile = self.options.profile
        self.device = torch.device(self.options.device or pipe.transformer.device)
        transformer = pipe.transformer
        if self.options.attention_backend:
            transformer.set_attention_backend(self.options.attention_backend)
        self._prepare_fp8()
        if self.options.compile:
            _compile_blocks(transformer, self.options.compile_mode, self.options.compile_dynamic)
        if self.options.compile_vae:
            compile_vae(pipe.vae)
        place(pipe, self.profile, str(self.device))
        self.prompts = PromptCache(pipe, self.options.prompt_cache, keep=CACHED_PROMPTS)
        self.tiled: list[str] = []
        """The VAE stages the last edit ran tiled (`encode`, `decode`) because they would not fit untiled."""

    def _prepare_fp8(self) -> None:
        """FP8 weights in place of bf16 (an FP8 profile), or FP8 copies beside them (`fp8` option, `resident`)."""
        wanted = not self.profile.exact or self.options.fp8
        if wanted and not fp8_supported(self.device):
            raise ChronoEditError("FP8 matrix multiplies need a CUDA GPU of compute capability 8.9 or newer")
        if not self.profile.exact:
            store_fp8(self.pipe, self.profile, str(self.device))
        elif self.options.fp8:
            if self.profile.name != "resident":
                raise ChronoEditError(
                    f"FP8 copies (CHRONOEDIT_FP8) sit beside the resident bf16 weights; under memory profile "
                    f"{self.profile.name!r} they would take the memory it saves: use fp8-resident or fp8-offload"
                )
            wrap_linears(self.pipe.transformer.blocks)

    @property
    def fp8_available(self) -> bool:
        """Whether jobs may ask for FP8 (on an FP8 profile every job runs FP8 anyway)."""
        return self.options.fp8 or not self.profile.exact

    def run(self, request: EditRequest, image: Image.Image, on_step: StepCallback | None = None) -> EditResult:
        latents = self.denoise(request, prepare_image(image, request.width, request.height), on_step)
        return EditResult(frames=frames_to_images(self.decode(latents, request.temporal_reasoning)))

    @torch.no_grad()
    def denoise(self, request: EditRequest, image: Image.Image, on_step: StepCallback | None = None) -> torch.Tensor:
        """The stock pipeline's steps 3 to 6, in its order, returning the final latents."""
        pipe, transformer, device = self.pipe, self.pipe.transformer, self.device
        plan = self.check(request)
        self.tiled = ["encode"] if plan.tile_encode else []
        dtype = transformer.dtype
        prompt_embeds = self.prompts.embeds(request.prompt, device).to(dtype)
        guided = request.guidance_scale > 1
        negative_embeds = self.prompts.embeds(request.negative_prompt, device).to(dtype) if guided else None
        image_embeds = pipe.encode_image(image, device).to(dtype)

        scheduler = make_scheduler(pipe, request.flow_shift)
        scheduler.set_timesteps(request.num_inference_steps, device=device)
        video = pipe.video_processor.preprocess(image, height=request.height, width=request.width)
        with _vae_tiling(pipe.vae, plan.tile_encode):
            latents, condition = pipe.prepare_latents(
                video.to(device, dtype=torch.float32),
                1,
                pipe.vae.config.z_dim,
                request.height,
                request.width,
                request.num_frames,
                torch.float32,
                device,
                torch.Generator("cpu").manual_seed(request.seed),
                None,
            )
        reasoning_end = request.reasoning_steps if request.reasoning_steps is not None else len(scheduler.timesteps)
        total = len(scheduler.timesteps)
        with self._step_cache(request.step_cache_threshold), fp8_enabled(transformer.blocks, request.fp8):
            for i, t in enumerate(scheduler.timesteps):
                if request.temporal_reasoning and i == reasoning_end:
                    latents, condition = _drop_reasoning_frames(latents, condition, scheduler)
                model_input = torch.cat([latents, condition], dim=1).to(dtype)
                timestep = t.expand(latents.shape[0])
                call = {"hidden_states": model_input, "timestep": timestep, "encoder_hidden_states_image": image_embeds}
                predict = partial(self._predict, call, {"cond": prompt_embeds, "uncond": negative_embeds})
                noise_pred = self.guidance.noise_pred(predict, guidance_at(request, i))
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if on_step is not None and on_step(i + 1, total) is False:
                    raise EditStopped(i + 1)
        return latents

    def check(self, request: EditRequest) -> memory.Plan:
        """Refuse, before any work, what this runner cannot do: sizes off the 16-pixel grid, more than the GPU has
        left under the memory profile, FP8 without FP8 weights. Returns the stage plan it fits with."""
        if request.height % 16 or request.width % 16:
            raise ValueError(
                f"`height` and `width` have to be divisible by 16 but are {request.height} and {request.width}."
            )
        plan = self.plan(request)
        if request.fp8 and not self.fp8_available:
            message = "this worker has no FP8 weights (CHRONOEDIT_FP8, or the fp8-resident / fp8-offload profiles)"
            raise ChronoEditError(message, code="fp8_unavailable")
        return plan

    def plan(self, request: EditRequest) -> memory.Plan:
        """Which VAE stages this edit runs tiled, given what the GPU has left now; `TooLargeForDevice` when even the
        profile's best plan does not fit. Off the GPU nothing is tiled or refused."""
        return self._plan(request.width, request.height, request.num_frames)

    def _plan(self, width: int, height: int, frames: int) -> memory.Plan:
        if self.device.type != "cuda":
            return memory.Plan()
        return memory.plan(self.profile, width, height, frames, memory.available_bytes(self.device))

    def max_area(self, frames: int) -> int | None:
        """The largest output area (pixels) this worker admits now for `frames` frames; None off the GPU."""
        if self.device.type != "cuda":
            return None
        return memory.max_area(self.profile, frames, memory.available_bytes(self.device))

    def fitting_size(self, width: int, height: int, frames: int = EDIT_FRAMES) -> Size | None:
        """`width` x `height` when this worker admits it now, else the largest size at that aspect ratio it admits
        (None when not even the smallest fits)."""
        area = self.max_area(frames)
        if area is None or width * height <= area:
            return Size(width, height)
        return memory.largest_size(width, height, area)

    def _predict(self, call: dict[str, Any], embeds: dict[Branch, torch.Tensor | None], branch: Branch) -> torch.Tensor:
        """One transformer pass of the current step, inside the cache context the step cache keys its state by."""
        transformer = self.pipe.transformer
        with transformer.cache_context(branch):
            return transformer(encoder_hidden_states=embeds[branch], return_dict=False, **call)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, temporal_reasoning: bool) -> np.ndarray:
        """The stock pipeline's decoding: de-normalise, VAE-decode (reasoning and edit frames apart), to [0, 1]."""
        vae = self.pipe.vae
        latents = latents.to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        latents = latents / inverse_std + mean
        frames = (latents.shape[2] - 1) * 4 + 1
        plan = self._plan(latents.shape[4] * 8, latents.shape[3] * 8, frames)
        if plan.tile_decode:
            self.tiled = [*self.tiled, "decode"]
        with _vae_tiling(vae, plan.tile_decode):
            if temporal_reasoning and latents.shape[2] > 2:
                edit = vae.decode(latents[:, :, [0, -1]], return_dict=False)[0]
                reasoning = vae.decode(latents[:, :, :-1], return_dict=False)[0]
                video = torch.cat([reasoning, edit[:, :, 1:]], dim=2)
            else:
                video = vae.decode(latents, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")[0]

    def _step_cache(self, threshold: float | None) -> Any:
        return _StepCache(self.pipe.transformer, threshold)


def _compile_blocks(transformer: Any, mode: str | None = None, dynamic: bool | None = None) -> None:
    """Regional compilation: each repeated block's `forward` is compiled (shapes: 5 and 29 frames compile once each).

    Unlike `compile_repeated_blocks`, which compiles the module call, this leaves room for diffusers' cache hooks to
    wrap the compiled forward from outside (dynamo cannot trace the hooks themselves).
    """
    for block in transformer.blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, mode=mode, dynamic=dynamic)


def compile_vae(vae: Any, dynamic: bool = False) -> None:
    """Regional compilation of the VAE: its residual and attention blocks fused around cuDNN's convolutions.

    Measured on one H200 (`bench/vae_speed.py`, float32, the fast edit's encode and decode): 1.21x at 1280x720 and
    1.19x at 2048x1536 (0.41 s saved per catalog upscale), output within 0.1% relative L2 of eager, and a lower peak.
    Each image size needs graphs of its own (a shape-generic graph, `dynamic=True`, ran at 0.83x), compiled at its
    first use in 37 to 82 s; the blocks share their code but not their shapes, so the recompile limits are raised to
    hold graphs for every block at several sizes. Beyond them dynamo runs the blocks eagerly, with the same output.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)
    for module in vae.modules():
        if type(module).__name__ in ("WanResidualBlock", "WanAttentionBlock"):
            module.compile(dynamic=dynamic)


@contextmanager
def _vae_tiling(vae: Any, tiled: bool) -> Iterator[None]:
    """The VAE tiled for one stage (smaller peak, slightly different pixels at the tiles' seams)."""
    if not tiled:
        yield
        return
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()


def _drop_reasoning_frames(
    latents: torch.Tensor, condition: torch.Tensor, scheduler: UniPCMultistepScheduler
) -> tuple[torch.Tensor, torch.Tensor]:
    """End of the reasoning phase: keep the first and last latent frames, in the scheduler's history too."""
    keep = [0, -1]
    for j, output in enumerate(scheduler.model_outputs):
        if output is not None and output.shape[-3] != 2:
            scheduler.model_outputs[j] = output[:, :, keep]
    if scheduler.last_sample is not None:
        scheduler.last_sample = scheduler.last_sample[:, :, keep]
    return latents[:, :, keep], condition[:, :, keep]


def _register_chronoedit_block() -> None:
    """diffusers 0.42 registers Wan's transformer block for its cache hooks but not ChronoEdit's copy of it, whose
    forward has the same signature and returns the hidden states alone; register it the same way."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.models.transformers.transformer_chronoedit import WanTransformerBlock

    try:
        TransformerBlockRegistry.get(WanTransformerBlock)
    except ValueError:
        metadata = TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None)
        TransformerBlockRegistry.register(model_class=WanTransformerBlock, metadata=metadata)


class _StepCache:
    """Enables FirstBlockCache on the transformer for one run, and removes it afterwards."""

    def __init__(self, transformer: Any, threshold: float | None) -> None:
        self.transformer, self.threshold = transformer, threshold

    def __enter__(self) -> None:
        if self.threshold is not None:
            _register_chronoedit_block()
            self.transformer.enable_cache(FirstBlockCacheConfig(threshold=self.threshold))

    def __exit__(self, *_: object) -> None:
        if self.threshold is not None:
            self.transformer.disable_cache()
