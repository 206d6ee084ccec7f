"""A worker that compiles its VAE for one output size (`CHRONOEDIT_COMPILE_VAE_SIZE`, for catalog workers that see one
size): it warms up at that size, its pixels stay those of the eager VAE, and a job at another size still runs (its
graphs compile at first use). Real stack: Redis, moto, the API, a Celery worker (CPU, the tiny model)."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.runner import EditRequest, EditRunner
from chronoedit_core.sizing import Size
from tests.stack import Stack, sample_image, wait_job
from worker.settings import WorkerSettings

INPUT = sample_image(64, 48, seed=8)
BODY = {
    "image_base64": base64.b64encode(INPUT).decode(),
    "prompt": "The user wants to turn the box into a drum.",
    "seed": 3,
    "mode": "standard",
    "num_inference_steps": 3,
    "guidance_scale": 1.0,
}


@pytest.fixture(scope="module")
def compiled(make_stack) -> Stack:
    stack = make_stack("compiled-vae")
    stack.start_api()
    stack.start_worker("vae-64x48", env={"CHRONOEDIT_COMPILE_VAE_SIZE": "64x48"})
    return stack


def image_of(job: dict) -> np.ndarray:
    png = httpx.get(job["outputs"]["image"]["url"], timeout=30).content
    return np.asarray(Image.open(io.BytesIO(png))).astype(int)


@pytest.mark.stack
def test_a_compiled_vae_warms_up_at_its_size_and_keeps_the_pixels(compiled: Stack, tiny_model: Path) -> None:
    log = compiled.log("vae-64x48", tail=None)
    assert re.search(r"compiled and warmed up in [0-9.]+ s at 64x48", log), "transformer compilation is off on CPU"
    with compiled.client() as http:
        jobs = {}
        for width, height in ((64, 48), (80, 48)):  # the compiled size, and one whose graphs compile at its first job
            submitted = http.post("/v1/edits", json={**BODY, "width": width, "height": height}).json()
            jobs[width, height] = wait_job(http, submitted["id"])
    eager = EditRunner(load_pipeline(tiny_model, Placement.resolve("cpu")))
    for (width, height), job in jobs.items():
        assert job["status"] == "succeeded", job
        request = EditRequest(
            prompt=job["params"]["model_prompt"],
            width=width,
            height=height,
            seed=3,
            num_inference_steps=3,
            guidance_scale=1.0,
            flow_shift=job["params"]["flow_shift"],
        )
        expected = np.asarray(eager.run(request, Image.open(io.BytesIO(INPUT)).convert("RGB")).image).astype(int)
        assert image_of(job).shape == expected.shape
        assert np.abs(image_of(job) - expected).max() <= 1, "compiled, the VAE's output stays the eager one's"


def test_the_compile_size_is_a_size_on_the_grid() -> None:
    assert WorkerSettings(compile_vae_size="2048x1536").vae_size() == Size(2048, 1536)
    assert WorkerSettings().vae_size() is None
    for wrong in ("2048", "2048x1536x2", "0x16", "2050x1536", "big"):
        with pytest.raises(ValidationError):
            WorkerSettings(compile_vae_size=wrong)
