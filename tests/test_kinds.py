"""Every kind and mode through the HTTP API on the real stack: presets, LoRAs switched without reloads, upscale
sizes, sketch overlays, output at input size, temporal reasoning, cancellation, weights you can trust."""

from __future__ import annotations

import base64
import io
import shutil
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import redis
from diffusers import ChronoEditPipeline
from PIL import Image, ImageDraw

from chronoedit_core.manifest import read_manifest, sha256_file
from tests.reference import stock_last_frame
from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def download_image(job: dict) -> np.ndarray:
    response = httpx.get(job["outputs"]["image"]["url"], timeout=30)
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)


def submit(client: httpx.Client, **fields: object) -> dict:
    body = {"image_base64": b64(sample_image(48, 36, seed=4)), "seed": 11, "num_inference_steps": 2, **fields}
    response = client.post("/v1/edits", json=body)
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture(scope="module")
def stock_with_adapters(tiny_model: Path) -> ChronoEditPipeline:
    pipe = ChronoEditPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for path in sorted((tiny_model / "loras").glob("*.safetensors")):
        pipe.load_lora_weights(str(path), adapter_name=path.stem)
    return pipe


CASES = [
    ("edit", "standard", {"prompt": "The user wants to make the box green.", "width": 48, "height": 32}),
    ("edit", "fast", {"prompt": "The user wants to make the box green.", "width": 48, "height": 32}),
    ("upscale", "standard", {"scale": 2}),
    ("upscale", "fast", {"width": 64, "height": 48}),
    ("sketch", "standard", {"prompt": "a crown", "width": 48, "height": 32}),
    ("sketch", "fast", {"prompt": "a crown", "width": 48, "height": 32}),
]


@pytest.mark.parametrize(("kind", "mode", "fields"), CASES, ids=[f"{k}-{m}" for k, m, _ in CASES])
def test_each_kind_and_mode_matches_stock_with_the_same_adapters(
    client: httpx.Client, stock_with_adapters: ChronoEditPipeline, tiny_model: Path, kind: str, mode: str, fields: dict
) -> None:
    done = wait_job(client, submit(client, kind=kind, mode=mode, **fields)["id"])
    assert done["status"] == "succeeded", done
    params = done["params"]
    expected_loras = {"edit": [], "upscale": ["upscaler"], "sketch": ["paintbrush"]}[kind]
    assert params["loras"] == expected_loras + (["distill"] if mode == "fast" else [])
    assert (params["guidance_scale"], params["flow_shift"]) == ((1.0, 2.0) if mode == "fast" else (5.0, 5.0))
    assert done["ran_with"]["loras"].keys() == set(params["loras"])

    pipe = stock_with_adapters
    if params["loras"]:
        pipe.enable_lora()
        pipe.set_adapters(params["loras"], adapter_weights=[1.0] * len(params["loras"]))
    else:
        pipe.disable_lora()
    expected = stock_last_frame(tiny_model, sample_image(48, 36, seed=4), params, pipe=pipe)
    assert np.abs(download_image(done) - expected.astype(int)).max() <= 2


def test_limited_guidance_matches_stock_with_guidance_ended_after_those_steps(
    client: httpx.Client, stock_with_adapters: ChronoEditPipeline, tiny_model: Path
) -> None:
    fields = {"prompt": "The user wants to make the box green.", "width": 48, "height": 32, "num_inference_steps": 3}
    done = wait_job(client, submit(client, guidance_steps=1, **fields)["id"])
    assert done["status"] == "succeeded", done
    assert (done["params"]["guidance_steps"], done["params"]["guidance_scale"]) == (1, 5.0)
    stock_with_adapters.disable_lora()
    expected = stock_last_frame(tiny_model, sample_image(48, 36, seed=4), done["params"], pipe=stock_with_adapters)
    assert np.abs(download_image(done) - expected.astype(int)).max() <= 2
    full = stock_last_frame(
        tiny_model, sample_image(48, 36, seed=4), {**done["params"], "guidance_steps": None}, pipe=stock_with_adapters
    )
    assert np.abs(download_image(done) - full.astype(int)).max() > 2, "and differs from guidance on every step"


def test_prompt_templates_and_upscale_sizes(client: httpx.Client) -> None:
    sketch = submit(client, kind="sketch", prompt="a crown", width=32, height=32)
    assert sketch["params"]["mode"] == "fast", "sketch defaults to the distilled mode it ships with"
    assert sketch["params"]["model_prompt"].endswith("The user wants to change the sketch to a crown.")
    upscale = submit(client, kind="upscale", scale=2)
    assert upscale["params"]["prompt"] == "" and "super-resolution" in upscale["params"]["model_prompt"]
    assert (upscale["params"]["width"], upscale["params"]["height"]) == (96, 64)  # 48x36 x2, floored to 16
    big = client.post(
        "/v1/edits",
        files={"image": ("p.png", sample_image(300, 200), "image/png")},
        data={"kind": "upscale", "scale": "8", "num_inference_steps": "1"},
    ).json()
    assert (big["params"]["width"], big["params"]["height"]) == (2048, 1360), "long side capped at 2048, aspect kept"
    client.post(f"/v1/edits/{big['id']}/cancel")
    for job in (sketch, upscale):
        wait_job(client, job["id"])


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"kind": "edit", "prompt": ""}, "invalid_prompt"),
        ({"kind": "sketch"}, "invalid_prompt"),
        ({"kind": "edit", "prompt": "x", "scale": 2}, "invalid_parameter"),
        ({"kind": "upscale", "scale": 2, "width": 64, "height": 64}, "invalid_size"),
        ({"kind": "upscale", "width": 4096, "height": 64}, "invalid_size"),
        ({"kind": "edit", "prompt": "x", "mode": "fast", "temporal_reasoning": True}, "reasoning_with_distill"),
        ({"kind": "edit", "prompt": "x", "reasoning_steps": 2}, "invalid_parameter"),
        ({"kind": "edit", "prompt": "x", "temporal_reasoning": True, "reasoning_steps": 9}, "invalid_parameter"),
        ({"kind": "edit", "prompt": "x", "mode": "quick"}, "invalid_parameter"),
        ({"kind": "edit", "prompt": "x", "mode": "fast", "guidance_steps": 1}, "invalid_parameter"),
        ({"kind": "edit", "prompt": "x", "guidance_steps": 3}, "invalid_parameter"),
        ({"kind": "edit", "prompt": "x", "sketch_base64": b64(sample_image())}, "invalid_parameter"),
    ],
)
def test_invalid_combinations_are_refused(client: httpx.Client, fields: dict, code: str) -> None:
    body = {"image_base64": b64(sample_image(48, 36)), "num_inference_steps": 2, **fields}
    response = client.post("/v1/edits", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code


def test_sketch_overlay_equals_the_sketch_drawn_into_the_image(client: httpx.Client) -> None:
    base = Image.open(io.BytesIO(sample_image(48, 32, seed=2))).convert("RGB")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    ImageDraw.Draw(overlay).ellipse((10, 6, 30, 24), outline=(0, 0, 0, 255), width=2)
    drawn = Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    common = {
        "kind": "sketch",
        "prompt": "a ring",
        "seed": "5",
        "num_inference_steps": "2",
        "width": "48",
        "height": "32",
    }
    with_overlay = client.post(
        "/v1/edits",
        data=common,
        files={"image": ("i.png", png(base), "image/png"), "sketch": ("s.png", png(overlay), "image/png")},
    ).json()
    pre_drawn = client.post("/v1/edits", data=common, files={"image": ("i.png", png(drawn), "image/png")}).json()
    outputs = [download_image(wait_job(client, job["id"])) for job in (with_overlay, pre_drawn)]
    assert np.abs(outputs[0] - outputs[1]).max() <= 2


def test_output_at_input_size(client: httpx.Client) -> None:
    done = wait_job(client, submit(client, prompt="x", width=32, height=32, output_size="input")["id"])
    assert done["outputs"]["image"]["width"] == 48 and done["outputs"]["image"]["height"] == 36
    assert download_image(done).shape == (36, 48, 3)


def test_switching_adapters_reproduces_pixels_and_never_reloads(client: httpx.Client, stack: Stack) -> None:
    first = wait_job(client, submit(client, prompt="x", width=32, height=32)["id"])
    wait_job(client, submit(client, kind="sketch", prompt="a hat", width=32, height=32)["id"])
    again = wait_job(client, submit(client, prompt="x", width=32, height=32)["id"])
    assert np.array_equal(download_image(first), download_image(again))
    (worker,) = stack.registered_workers()
    assert worker["model_loads"] == 1


def test_temporal_reasoning_renders_the_trajectory(client: httpx.Client) -> None:
    done = wait_job(
        client,
        submit(client, prompt="x", width=32, height=32, temporal_reasoning=True, outputs=["image", "video"], fps=8)[
            "id"
        ],
    )
    assert done["status"] == "succeeded", done
    assert done["params"]["reasoning_steps"] == 2
    response = httpx.get(done["outputs"]["video"]["url"])
    with av.open(io.BytesIO(response.content)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 29


def test_reasoning_jobs_wait_in_their_own_queue(make_stack) -> None:
    stack = make_stack("queues")
    stack.start_api()
    with stack.client() as client:
        submit(client, prompt="x", width=32, height=32, temporal_reasoning=True)
        submit(client, prompt="x", width=32, height=32)
    broker = redis.Redis.from_url(stack.env["CHRONOEDIT_REDIS_URL"])
    assert (broker.llen("reasoning"), broker.llen("edits")) == (1, 1)


def test_cancel_queued_and_running_jobs(client: httpx.Client) -> None:
    running = client.post(
        "/v1/edits",
        files={"image": ("p.png", sample_image(), "image/png")},
        data={"prompt": "x", "num_inference_steps": "80", "width": "256", "height": "192"},
    ).json()
    queued = submit(client, prompt="x", width=32, height=32)
    canceled = client.post(f"/v1/edits/{queued['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"

    deadline = time.monotonic() + 60
    while client.get(f"/v1/edits/{running['id']}").json()["progress"]["step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    asked = client.post(f"/v1/edits/{running['id']}/cancel").json()
    assert asked["cancel_requested_at"] is not None
    done = wait_job(client, running["id"])
    assert done["status"] == "canceled" and done["outputs"] == {}
    assert 2 <= done["progress"]["step"] < 80, "it stopped within a step of the request"
    assert done["timings"]["input_load"] is not None and done["timings"]["inference"] is None, "the stages it finished"
    assert wait_job(client, queued["id"])["status"] == "canceled"

    after = wait_job(client, submit(client, prompt="x", width=32, height=32)["id"])
    assert after["status"] == "succeeded"
    finished = client.post(f"/v1/edits/{after['id']}/cancel")
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "job_finished"


def test_models_lists_what_the_workers_hold(client: httpx.Client, tiny_model: Path) -> None:
    (worker,) = client.get("/v1/models").json()["data"]
    assert worker["base_digest"] == read_manifest(tiny_model).digest
    assert worker["loras"] == {p.stem: sha256_file(p) for p in (tiny_model / "loras").glob("*.safetensors")}
    assert (worker["device"], worker["dtype"]) == ("cpu", "float32")
    assert set(worker["queues"]) == {"edits", "reasoning", "batch"}


def test_worker_refuses_weights_that_do_not_match_the_manifest(make_stack, tiny_model: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_model, tampered)
    weights = tampered / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    stack = make_stack("tampered", CHRONOEDIT_MODEL_DIR=str(tampered))
    stack.start_api()
    worker = stack.start_worker("tampered", wait_ready=False)
    worker.process.wait(timeout=120)
    assert "does not match its manifest" in stack.log("tampered")
    with stack.client() as client:
        assert client.get("/readyz").status_code == 503


def test_upscale_never_shrinks(client: httpx.Client) -> None:
    wide = sample_image(2100, 64)
    response = client.post("/v1/edits", json={"kind": "upscale", "image_base64": b64(wide)})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_size"
