"""The prompt enhancer with the local backend: a tiny, randomly initialised Qwen2.5-VL checkpoint written by the
project (real transformers classes, a tokenizer and image processor built locally) loaded by an enhancer worker
process, fed through the `enhance` queue, ahead of a GPU worker with the tiny ChronoEdit model. Its prompts are
gibberish; what is checked is the flow: it ran, its text was recorded and used, the job succeeded."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def tiny_enhancer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chronoedit_core.tiny_vl import write_tiny_enhancer

    return write_tiny_enhancer(tmp_path_factory.mktemp("tiny-qwen-vl"))


@pytest.fixture(scope="module")
def served(make_stack, tiny_enhancer: Path) -> Stack:
    stack = make_stack("enhance-local", CHRONOEDIT_ENHANCE_PROMPT_DEFAULTS='{"edit": "required"}')
    stack.start_api()
    stack.start_worker("gpu-1")
    stack.start_enhancer(
        "qwen-1",
        env={
            "CHRONOEDIT_ENHANCER_BACKEND": "local",
            "CHRONOEDIT_ENHANCER_MODEL_DIR": str(tiny_enhancer),
            "CHRONOEDIT_ENHANCER_MAX_NEW_TOKENS": "12",
        },
    )
    return stack


def test_local_enhancer_runs_before_the_edit_by_the_kinds_default(served: Stack, tiny_enhancer: Path) -> None:
    image = base64.b64encode(sample_image(40, 32)).decode()
    edit = {"prompt": "white background", "image_base64": image, "num_inference_steps": 2, "width": 32, "height": 32}
    with served.client() as client:
        job = wait_job(client, client.post("/v1/edits", json=edit).json()["id"], timeout=180)
        off = wait_job(client, client.post("/v1/edits", json={**edit, "enhance_prompt": False}).json()["id"])
        sketch = client.post("/v1/edits", json={**edit, "kind": "sketch", "prompt": "a crown", "mode": "fast"}).json()
        models = client.get("/v1/models").json()["data"]
    assert job["status"] == "succeeded", job
    enhanced = job["params"]["enhanced_prompt"]
    assert enhanced and enhanced != "white background" and len(enhanced) <= 12, "12 new tokens of gibberish"
    assert job["params"]["model_prompt"] == enhanced and job["params"]["prompt"] == "white background"
    assert job["enhancement"]["enhancer"] == f"local:{tiny_enhancer.name}"
    assert job["enhancement"]["policy"] == "required", "the kind's default"
    assert off["enhancement"] is None and sketch["enhancement"] is None, "off when asked; other kinds' default off"
    assert [m["name"] for m in models] == ["gpu-1"], "an enhancer is not an edit worker"
    info = next(w for w in served.registered_workers() if w["name"] == "qwen-1")
    metrics = httpx.get(f"http://127.0.0.1:{info['metrics_port']}/metrics").text
    stage = 'chronoedit_job_stage_seconds_count{kind="edit",lane="interactive",mode="standard",stage="enhance"}'
    assert f"{stage} 1.0" in metrics
    assert 'chronoedit_prompt_enhancements_total{outcome="enhanced"} 1.0' in metrics
    assert 'chronoedit_enhancer_ready{worker="qwen-1"} 1.0' in metrics


def test_review_through_the_local_enhancer(served: Stack) -> None:
    with served.client() as client:
        response = client.post(
            "/v1/prompts/enhance",
            files={"image": ("shelf.png", sample_image(40, 32, seed=3), "image/png")},
            data={"prompt": "a crown", "kind": "sketch"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["enhanced_prompt"] and body["model_prompt"].startswith("Turn the pencil sketch")
    assert body["model_prompt"].endswith(f"change the sketch to {body['enhanced_prompt']}.")
