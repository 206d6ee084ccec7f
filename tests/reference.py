"""The stock diffusers pipeline, called the way NVIDIA's examples call it: the yardstick for fidelity tests."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import numpy as np
import torch
from diffusers import ChronoEditPipeline, UniPCMultistepScheduler
from PIL import Image


@cache
def stock_pipeline(model_dir: Path) -> ChronoEditPipeline:
    pipe = ChronoEditPipeline.from_pretrained(model_dir, local_files_only=True)  # CPU, float32
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_last_frame(model_dir: Path, image_bytes: bytes, params: dict) -> np.ndarray:
    """The edited image the stock pipeline gives for these parameters, as uint8 HxWx3."""
    pipe = stock_pipeline(model_dir)
    pipe.scheduler = UniPCMultistepScheduler.from_config(
        pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=params["flow_shift"]
    )
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB").resize((params["width"], params["height"]))
    frames = pipe(
        image=image,
        prompt=params["prompt"],
        negative_prompt=params["negative_prompt"],
        height=params["height"],
        width=params["width"],
        num_frames=5,
        num_inference_steps=params["num_inference_steps"],
        guidance_scale=params["guidance_scale"],
        generator=torch.Generator("cpu").manual_seed(params["seed"]),
    ).frames[0]
    return (frames[-1] * 255).clip(0, 255).astype("uint8")
