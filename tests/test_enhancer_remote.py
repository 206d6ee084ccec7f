"""The prompt enhancer with the remote backend, through real processes: the API, a GPU worker with the tiny model,
an enhancer worker (`chronoedit enhancer-worker`) calling a real chat-completions server on loopback, Redis, moto S3.
The failure policy both ways: `required` fails `enhancer_unavailable`, `best_effort` runs with the user's prompt."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from service.enhance.prompts import EDIT_SYSTEM_PROMPT
from tests.chat_server import Answer, ChatServer, start_chat_server
from tests.receiver import Receiver, start_receiver
from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

MODEL = "Qwen/Qwen3-VL-test"
ENHANCED = (
    "The user wants to place the ceramic mug on a pure white background and remove its shadow, while keeping the "
    "mug itself, its blue glaze, its handle, the printed logo and the camera angle exactly as they are."
)
EDIT = {"num_inference_steps": 2, "width": 32, "height": 32, "seed": 7}


@pytest.fixture(scope="module")
def chat() -> Iterator[ChatServer]:
    server, http_server = start_chat_server(MODEL)
    yield server
    http_server.shutdown()


@pytest.fixture(scope="module")
def served(make_stack, chat: ChatServer) -> Stack:
    stack = make_stack("enhance-remote", CHRONOEDIT_ENHANCE_TIMEOUT_SECONDS="20")
    stack.start_api()
    stack.start_worker("gpu-1")
    stack.start_enhancer(
        "enhancer-1",
        env={
            "CHRONOEDIT_ENHANCER_BACKEND": "remote",
            "CHRONOEDIT_ENHANCER_URL": f"{chat.base_url}/v1",
            "CHRONOEDIT_ENHANCER_MODEL": MODEL,
            "CHRONOEDIT_ENHANCER_REQUEST_TIMEOUT_SECONDS": "1",
            "CHRONOEDIT_ENHANCER_MAX_RETRIES": "1",
        },
    )
    return stack


@pytest.fixture(scope="module")
def images() -> Iterator[Receiver]:
    receiver, server = start_receiver()
    for i in range(3):
        receiver.files[f"/img/{i}.png"] = sample_image(40, 32, seed=i)
    yield receiver
    server.shutdown()


def submit(client: httpx.Client, prompt: str, seed_image: int = 0, **fields: Any) -> dict:
    image = base64.b64encode(sample_image(40, 32, seed=seed_image)).decode()
    response = client.post("/v1/edits", json={**EDIT, "prompt": prompt, "image_base64": image, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def image_of(job: dict) -> bytes:
    return httpx.get(job["outputs"]["image"]["url"]).content


def test_the_edit_runs_with_the_enhanced_prompt_and_records_both(served: Stack, chat: ChatServer) -> None:
    chat.play(Answer(f"Here is the rewritten prompt: {ENHANCED}"))
    with served.client() as client:
        created = submit(client, "white background, remove the shadow", enhance_prompt="required")
        assert created["enhancement"]["status"] == "pending" and created["progress"]["stage"] == "enhancing"
        job = wait_job(client, created["id"])
        plain = wait_job(client, submit(client, "white background, remove the shadow")["id"])
        by_hand = wait_job(client, submit(client, ENHANCED)["id"])
    assert job["status"] == "succeeded", job
    params = job["params"]
    assert params["prompt"] == "white background, remove the shadow"
    assert params["enhanced_prompt"] == ENHANCED == params["model_prompt"], "preamble removed, template applied"
    assert job["enhancement"] == {
        "policy": "required", "status": "succeeded", "enhancer": f"remote:{MODEL}", "error": None, "shared": False
    }  # fmt: skip
    assert image_of(job) == image_of(by_hand), "the model saw the enhanced prompt"
    assert image_of(job) != image_of(plain), "and not the user's"
    assert plain["enhancement"] is None and plain["params"]["enhanced_prompt"] is None
    [request] = chat.received()
    assert request["model"] == MODEL and request["temperature"] == 0
    system, user = request["messages"]
    assert system["role"] == "system" and system["content"][0]["text"] == EDIT_SYSTEM_PROMPT
    image_part, text_part = user["content"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (40, 32)
    assert text_part["text"] == "Instruction: white background, remove the shadow"


def test_review_first_then_the_job_reuses_the_same_enhancement(served: Stack, chat: ChatServer) -> None:
    chat.play(Answer("The user wants to turn the mug matte black while keeping everything else identical."))
    with served.client() as client:
        review = client.post(
            "/v1/prompts/enhance",
            files={"image": ("mug.png", sample_image(40, 32, seed=1), "image/png")},
            data={"prompt": "make it matte black"},
        )
        assert review.status_code == 200, review.text
        job = wait_job(client, submit(client, "make it matte black", seed_image=1, enhance_prompt=True)["id"])
        bad = client.post("/v1/prompts/enhance", json={"prompt": "x", "image_base64": "bm90IGFuIGltYWdl"})
    body = review.json()
    assert body["enhanced_prompt"] == body["model_prompt"] == job["params"]["enhanced_prompt"]
    assert body["enhancer"] == f"remote:{MODEL}" and not body["shared"]
    assert (
        job["status"] == "succeeded" and job["enhancement"]["shared"] and job["enhancement"]["policy"] == "best_effort"
    )
    assert len(chat.received()) == 1, "one enhancement for the review and the job"
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_image"


def test_batch_items_with_the_same_instruction_and_image_share_one_enhancement(
    served: Stack, chat: ChatServer, images: Receiver
) -> None:
    chat.play(Answer("The user wants to put the product on a light grey studio background, product unchanged."))
    items = [{"image_url": f"{images.base_url}/img/{i}.png", "reference": f"r{n}"} for n, i in enumerate([0, 0, 0, 1])]
    with served.client() as client:
        created = client.post(
            "/v1/batches",
            json={**EDIT, "prompt": "grey studio background", "enhance_prompt": "required", "items": items},
        )
        assert created.status_code == 201, created.text
        jobs = [wait_job(client, item["job_id"]) for item in created.json()["items"]]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    assert len(chat.received()) == 2, "one per distinct image"
    assert sorted(job["enhancement"]["shared"] for job in jobs[:3]) == [False, True, True]
    assert not jobs[3]["enhancement"]["shared"]
    assert len({job["params"]["enhanced_prompt"] for job in jobs}) == 1


@pytest.mark.parametrize("answer", [Answer(status=500), Answer("too late", delay=3)], ids=["http-500", "timeout"])
def test_failure_policy_both_ways(served: Stack, chat: ChatServer, answer: Answer) -> None:
    chat.play(answer)
    prompt = f"remove the background ({answer.status}, {answer.delay})"
    with served.client() as client:
        required = wait_job(client, submit(client, prompt, enhance_prompt="required")["id"])
        best = wait_job(client, submit(client, prompt + " ", enhance_prompt="best_effort")["id"])
        review = client.post(
            "/v1/prompts/enhance",
            json={"prompt": prompt + "  ", "image_base64": base64.b64encode(sample_image()).decode()},
        )
    assert required["status"] == "failed" and required["error"]["code"] == "enhancer_unavailable", required
    assert required["enhancement"]["status"] == "failed" and required["attempt"] == 0, "no GPU work"
    expected = "InternalServerError" if answer.status == 500 else "APITimeoutError"
    assert expected in required["error"]["message"] and expected in required["enhancement"]["error"]
    assert best["status"] == "succeeded", best
    assert best["enhancement"]["status"] == "failed" and expected in best["enhancement"]["error"]
    assert best["params"]["enhanced_prompt"] is None and best["params"]["model_prompt"] == prompt + " "
    assert review.status_code == 503 and review.json()["error"]["code"] == "enhancer_unavailable"
    assert len(chat.received()) == 6, "each of the three asked twice: one retry"


def test_upscale_takes_no_enhancement(served: Stack) -> None:
    with served.client() as client:
        response = client.post(
            "/v1/edits",
            json={
                "kind": "upscale",
                "enhance_prompt": "required",
                "image_base64": base64.b64encode(sample_image()).decode(),
            },
        )
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_parameter"
    assert "upscale" in response.json()["error"]["message"]


def test_without_an_enhancer_jobs_go_by_their_policy_at_the_deadline(make_stack) -> None:
    stack = make_stack("enhance-none", CHRONOEDIT_ENHANCE_TIMEOUT_SECONDS="2")
    stack.start_api()  # no enhancer, no GPU worker
    with stack.client() as client:
        image = base64.b64encode(sample_image()).decode()
        required = client.post(
            "/v1/edits", json={**EDIT, "prompt": "p", "image_base64": image, "enhance_prompt": "required"}
        )
        best = client.post(
            "/v1/edits", json={**EDIT, "prompt": "p", "image_base64": image, "enhance_prompt": "best_effort"}
        )
        failed = wait_job(client, required.json()["id"], timeout=30)
        went_on = best.json()
        deadline = time.monotonic() + 30
        while went_on["enhancement"]["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
            went_on = client.get(f"/v1/edits/{went_on['id']}").json()
        review = client.post("/v1/prompts/enhance", json={"prompt": "p", "image_base64": image})
    assert failed["status"] == "failed" and failed["error"]["code"] == "enhancer_unavailable"
    assert "within 2 s" in failed["error"]["message"]
    assert went_on["status"] == "queued" and went_on["enhancement"]["status"] == "failed"
    assert went_on["progress"]["stage"] == "queued" and went_on["queue_position"] == 1, "waits for a GPU worker"
    assert review.status_code == 503 and "no prompt enhancer is running" in review.json()["error"]["message"]
