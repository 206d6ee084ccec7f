"""Running one edit on a loaded pipeline.

`EditRunner` owns the per-job choices the stock `ChronoEditPipeline` leaves to the caller: the input resize (the
official scripts resize with PIL before calling the pipeline), a `UniPCMultistepScheduler` at the job's flow shift,
a CPU generator seeded per job, per-step progress, and the official float-to-uint8 conversion of the frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ChronoEditPipeline, UniPCMultistepScheduler
from PIL import Image

EDIT_FRAMES = 5
"""Without temporal reasoning the pipeline always renders 5 frames (2 latent frames): input ... edit."""

StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, total steps)."""


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


@dataclass(frozen=True)
class EditResult:
    frames: list[Image.Image]
    """Every frame of the rendered video, first (the input) to last (the edit)."""

    @property
    def image(self) -> Image.Image:
        return self.frames[-1]


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

    def __init__(self, pipe: ChronoEditPipeline) -> None:
        self.pipe = pipe

    def run(self, request: EditRequest, image: Image.Image, on_step: StepCallback | None = None) -> EditResult:
        pipe = self.pipe
        pipe.scheduler = make_scheduler(pipe, request.flow_shift)
        total = request.num_inference_steps

        def callback(_pipe: ChronoEditPipeline, step: int, _t: torch.Tensor, kwargs: dict) -> dict:
            if on_step is not None:
                on_step(step + 1, total)
            return kwargs

        output = pipe(
            image=prepare_image(image, request.width, request.height),
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            height=request.height,
            width=request.width,
            num_frames=EDIT_FRAMES,
            num_inference_steps=total,
            guidance_scale=request.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="np",
            callback_on_step_end=callback,
        )
        return EditResult(frames=frames_to_images(output.frames[0]))
