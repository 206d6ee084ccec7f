"""The `turbo` mode: a worker that loads a few-step distilled transformer in place of the base one (here a second tiny
transformer with other weights) serves `mode: turbo` edits from its own queue, says so in `GET /v1/models` with the
transformer's digest, and records it on every job it runs. Real stack: Redis, moto, the API, Celery workers (CPU)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.manifest import read_manifest
from chronoedit_core.presets import preset
from chronoedit_core.runner import EditRequest, EditRunner
from chronoedit_core.tiny import write_tiny_turbo_transformer
from tests.stack import Stack, sample_image, wait_job
from worker.settings import WorkerSettings

pytestmark = pytest.mark.stack

INPUT = sample_image(64, 48, seed=4)
BODY = {
    "image_base64": base64.b64encode(INPUT).decode(),
    "prompt": "The user wants to turn the box into a lantern.",
    "seed": 17,
    "width": 64,
    "height": 48,
}


@pytest.fixture(scope="module")
def turbo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_turbo_transformer(tmp_path_factory.mktemp("turbo-transformer"))


@pytest.fixture(scope="module")
def turbo(make_stack, turbo_dir: Path) -> Stack:
    """A base worker for `standard` and `fast`, and a turbo worker, side by side."""
    stack = make_stack("turbo")
    stack.start_api()
    stack.start_worker("base", env={"CHRONOEDIT_QUEUES": '["edits"]'})
    stack.start_worker("turbo", env={"CHRONOEDIT_TURBO_TRANSFORMER": str(turbo_dir), "CHRONOEDIT_QUEUES": '["turbo"]'})
    return stack


def image_of(job: dict) -> np.ndarray:
    png = httpx.get(job["outputs"]["image"]["url"], timeout=30).content
    return np.asarray(Image.open(io.BytesIO(png))).astype(int)


def test_models_list_each_workers_modes_and_the_turbo_transformer(turbo: Stack, turbo_dir: Path) -> None:
    with turbo.client() as http:
        listed = {w["name"]: w for w in http.get("/v1/models").json()["data"]}
    assert (listed["base"]["modes"], listed["base"]["transformer_digest"]) == (["standard", "fast"], None)
    assert listed["turbo"]["modes"] == ["turbo"]
    assert listed["turbo"]["queues"] == ["turbo"]
    assert listed["turbo"]["transformer_digest"] == read_manifest(turbo_dir).digest
    assert listed["turbo"]["base_digest"] == listed["base"]["base_digest"], "the other components are the base's"
    assert listed["turbo"]["loras"] == {}, "the adapters belong to the base transformer"


def test_a_turbo_edit_runs_the_few_step_transformer_with_its_preset(
    turbo: Stack, turbo_dir: Path, tiny_model: Path
) -> None:
    with turbo.client() as http:
        job = wait_job(http, http.post("/v1/edits", json={**BODY, "mode": "turbo"}).json()["id"])
        same_numbers_on_base = {**BODY, "mode": "standard", "num_inference_steps": 4, "guidance_scale": 1.0}
        base = wait_job(http, http.post("/v1/edits", json=same_numbers_on_base).json()["id"])
    assert job["status"] == base["status"] == "succeeded", (job, base)
    turbo_preset = preset("edit", "turbo")
    params = job["params"]
    assert (params["mode"], params["loras"]) == ("turbo", [])
    assert (params["num_inference_steps"], params["guidance_scale"], params["flow_shift"]) == (
        turbo_preset.num_inference_steps,
        turbo_preset.guidance_scale,
        turbo_preset.flow_shift,
    )
    assert job["ran_with"]["transformer_digest"] == read_manifest(turbo_dir).digest
    assert base["ran_with"]["transformer_digest"] is None

    pipe = load_pipeline(tiny_model, Placement.resolve("cpu"), transformer_dir=turbo_dir)
    request = EditRequest(
        prompt=params["model_prompt"],
        width=64,
        height=48,
        seed=17,
        num_inference_steps=params["num_inference_steps"],
        guidance_scale=params["guidance_scale"],
        flow_shift=params["flow_shift"],
    )
    expected = np.asarray(EditRunner(pipe).run(request, Image.open(io.BytesIO(INPUT)).convert("RGB")).image)
    assert np.array_equal(image_of(job), expected.astype(int)), "the turbo worker ran the turbo transformer"
    assert not np.array_equal(image_of(job), image_of(base)), "and not the base one"


def test_turbo_is_refused_where_it_cannot_run(turbo: Stack, client: httpx.Client) -> None:
    refused = client.post("/v1/edits", json={**BODY, "mode": "turbo"})  # the shared stack has no turbo worker
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "mode_unavailable"
    upscale = client.post("/v1/edits", json={**BODY, "kind": "upscale", "mode": "turbo", "prompt": ""})
    assert (upscale.status_code, upscale.json()["error"]["code"]) == (422, "invalid_parameter"), upscale.text
    assert "`edit` jobs" in upscale.json()["error"]["message"], "the request's own fault first"
    with turbo.client() as http:
        reasoning = http.post("/v1/edits", json={**BODY, "mode": "turbo", "temporal_reasoning": True})
        batch = http.post("/v1/batches", json={"mode": "turbo", "prompt": "x", "items": [{"image_url": "http://x/"}]})
    assert (reasoning.status_code, reasoning.json()["error"]["code"]) == (422, "invalid_parameter"), reasoning.text
    assert (batch.status_code, batch.json()["error"]["code"]) == (422, "invalid_parameter"), batch.text
    assert any("mode" in str(detail) for detail in batch.json()["error"]["details"]), batch.text


def test_only_turbo_workers_read_the_turbo_queue(tmp_path: Path) -> None:
    turbo_worker = WorkerSettings(turbo_transformer=tmp_path)
    assert turbo_worker.queues == ["turbo"]
    assert WorkerSettings(model_dir=tmp_path, turbo_transformer=Path("turbo")).turbo_dir() == tmp_path / "turbo"
    with pytest.raises(ValidationError, match="consumes only the `turbo` queue"):
        WorkerSettings(turbo_transformer=tmp_path, queues=["edits", "turbo"])
    with pytest.raises(ValidationError, match="for workers with CHRONOEDIT_TURBO_TRANSFORMER"):
        WorkerSettings(queues=["edits", "turbo"])
    with pytest.raises(ValidationError, match="worker groups run the base transformer"):
        WorkerSettings(group_queues=["reasoning", "turbo"])
