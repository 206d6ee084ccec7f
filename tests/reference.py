"""The stock diffusers pipeline, called the way NVIDIA's examples call it: the yardstick for fidelity tests."""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ChronoEditPipeline, UniPCMultistepScheduler
from PIL import Image

from chronoedit_core.runner import EditRequest


@cache
def stock_pipeline(model_dir: Path) -> ChronoEditPipeline:
    pipe = ChronoEditPipeline.from_pretrained(model_dir, local_files_only=True)  # CPU, float32
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_frames(
    model_dir: Path, request: EditRequest, image: Image.Image, pipe: ChronoEditPipeline | None = None
) -> np.ndarray:
    """Every frame the stock pipeline renders for `request`, as uint8 NxHxWx3 (the official conversion)."""
    pipe = pipe or stock_pipeline(model_dir)
    pipe.scheduler = UniPCMultistepScheduler.from_config(
        pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=request.flow_shift
    )
    frames = pipe(
        image=image,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        enable_temporal_reasoning=request.temporal_reasoning,
        num_temporal_reasoning_steps=request.reasoning_steps or 0,
        callback_on_step_end=_guidance_ends_after(request.guidance_steps) if request.guidance_steps else None,
    ).frames[0]
    return (frames * 255).clip(0, 255).astype("uint8")


def _guidance_ends_after(steps: int) -> Callable[..., dict]:
    """Limited guidance in the stock pipeline: its loop runs the unconditional pass while `_guidance_scale` > 1, so a
    step-end callback that sets it to 1 after `steps` steps leaves the remaining steps unguided."""

    def callback(pipe: ChronoEditPipeline, index: int, timestep: Any, tensors: dict) -> dict:
        if index + 1 >= steps:
            pipe._guidance_scale = 1.0
        return {}

    return callback


def stock_last_frame(
    model_dir: Path, image_bytes: bytes, params: dict, pipe: ChronoEditPipeline | None = None
) -> np.ndarray:
    """The edited image for a job's `params` (the prompt the model saw, when recorded); the input is resized as the
    official scripts do."""
    request = EditRequest(
        prompt=params.get("model_prompt") or params["prompt"],
        negative_prompt=params["negative_prompt"],
        width=params["width"],
        height=params["height"],
        seed=params["seed"],
        num_inference_steps=params["num_inference_steps"],
        guidance_scale=params["guidance_scale"],
        flow_shift=params["flow_shift"],
        guidance_steps=params.get("guidance_steps"),
    )
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB").resize((request.width, request.height))
    return stock_frames(model_dir, request, image, pipe=pipe)[-1]
