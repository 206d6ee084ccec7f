"""Through HTTP against the real stack: Redis, moto's S3 server, a Celery worker process, the tiny model."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator

import av
import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from tests.reference import stock_last_frame
from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack


def download(url: str) -> bytes:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def test_multipart_edit_returns_png_and_mp4(client: httpx.Client, stack: Stack) -> None:
    image = sample_image(96, 64)
    response = client.post(
        "/v1/edits",
        files={"image": ("photo.png", image, "image/png")},
        data={
            "prompt": "make the box blue",
            "num_inference_steps": "3",
            "width": "64",
            "height": "48",
            "outputs": ["image", "video"],
            "fps": "8",
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/edits/{job['id']}"
    assert job["status"] == "queued" and job["kind"] == "edit"
    assert job["params"]["seed"] >= 0, "a seed is drawn and recorded when absent"
    assert job["progress"] == {"step": 0, "total": 3, "stage": "queued"}

    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": 3, "total": 3, "stage": "done"}
    assert done["attempt"] == 1
    assert done["started_at"] <= done["finished_at"]

    png = Image.open(io.BytesIO(download(done["outputs"]["image"]["url"])))
    assert png.format == "PNG" and png.size == (64, 48)
    assert done["outputs"]["image"]["url"].startswith(stack.env["CHRONOEDIT_S3_ENDPOINT_URL"]), "presigned S3 URL"

    with av.open(io.BytesIO(download(done["outputs"]["video"]["url"]))) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        rate = container.streams.video[0].average_rate
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)
    assert rate == 8
    assert done["outputs"]["video"]["content_type"] == "video/mp4"


def test_size_rule_applies_without_width_and_height(client: httpx.Client) -> None:
    response = client.post(
        "/v1/edits",
        files={"image": ("p.png", sample_image(40, 30), "image/png")},
        data={"prompt": "x", "num_inference_steps": "1"},
    )
    params = response.json()["params"]
    # 720x1280 area at aspect 3:4, floored to multiples of 16: round(sqrt(921600 * 0.75)) = 831 -> 816.
    assert (params["width"], params["height"]) == (1104, 816)


def test_png_matches_stock_pipeline_for_same_seed(client: httpx.Client, tiny_model) -> None:
    """Fidelity: the served PNG equals the stock diffusers pipeline's last frame within 2/255 per pixel."""
    image = sample_image(80, 60, seed=3)
    cases = [
        {"guidance_scale": 5.0, "flow_shift": 5.0, "negative_prompt": ""},
        {"guidance_scale": 1.0, "flow_shift": 2.0, "negative_prompt": ""},
        {"guidance_scale": 3.5, "flow_shift": 3.0, "negative_prompt": "blurry, low quality"},
    ]
    for case in cases:
        params = {
            "prompt": "The user wants to make the box green.",
            "seed": 1234,
            "num_inference_steps": 4,
            "width": 64,
            "height": 48,
            **case,
        }
        body = {**params, "image_base64": base64.b64encode(image).decode()}
        job = client.post("/v1/edits", json=body).json()
        done = wait_job(client, job["id"])
        assert done["status"] == "succeeded", done
        served = np.asarray(Image.open(io.BytesIO(download(done["outputs"]["image"]["url"]))).convert("RGB"))
        expected = stock_last_frame(tiny_model, image, params)
        difference = np.abs(served.astype(int) - expected.astype(int)).max()
        assert difference <= 2, f"{case}: max pixel difference {difference}"
        assert served.std() > 1, "the output is not a flat image"


def test_seed_changes_output(client: httpx.Client) -> None:
    outputs = []
    for seed in (1, 2):
        job = client.post(
            "/v1/edits",
            json={
                "prompt": "x",
                "seed": seed,
                "num_inference_steps": 2,
                "width": 32,
                "height": 32,
                "image_base64": base64.b64encode(sample_image(32, 32)).decode(),
            },
        ).json()
        done = wait_job(client, job["id"])
        outputs.append(np.asarray(Image.open(io.BytesIO(download(done["outputs"]["image"]["url"])))))
    assert np.abs(outputs[0].astype(int) - outputs[1].astype(int)).max() > 2


@pytest.fixture
def image_server() -> Iterator[str]:
    """A real HTTP server on loopback serving one JPEG, allowed by CHRONOEDIT_FETCH_ALLOW_HOSTS."""
    jpeg = sample_image(64, 64, fmt="JPEG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/photo.jpg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(jpeg)))
            self.end_headers()
            self.wfile.write(jpeg)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_json_image_url(client: httpx.Client, image_server: str) -> None:
    job = client.post(
        "/v1/edits",
        json={
            "prompt": "x",
            "image_url": f"{image_server}/photo.jpg",
            "num_inference_steps": 1,
            "width": 32,
            "height": 32,
        },
    )
    assert job.status_code == 202, job.text
    assert job.json()["input"]["content_type"] == "image/jpeg"
    assert wait_job(client, job.json()["id"])["status"] == "succeeded"

    missing = client.post("/v1/edits", json={"prompt": "x", "image_url": f"{image_server}/nope.jpg"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "image_fetch_failed"


def test_failing_job_ends_failed_and_worker_survives(client: httpx.Client, stack: Stack) -> None:
    """A job whose input vanished from storage fails with `input_missing`; the next job still runs."""
    slow = client.post(
        "/v1/edits",
        files={"image": ("p.png", sample_image(), "image/png")},
        data={"prompt": "x", "num_inference_steps": "40", "width": "256", "height": "192"},
    ).json()
    doomed = client.post(
        "/v1/edits",
        files={"image": ("p.png", sample_image(), "image/png")},
        data={"prompt": "x", "width": "32", "height": "32"},
    ).json()
    assert client.get(f"/v1/edits/{doomed['id']}").json()["status"] == "queued"
    stack.s3().delete_object(Bucket=stack.bucket, Key=f"jobs/{doomed['id']}/input/image.png")

    failed = wait_job(client, doomed["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "input_missing"
    assert failed["outputs"] == {}
    assert wait_job(client, slow["id"])["status"] == "succeeded"

    after = client.post(
        "/v1/edits",
        files={"image": ("p.png", sample_image(), "image/png")},
        data={"prompt": "x", "num_inference_steps": "1", "width": "32", "height": "32"},
    ).json()
    assert wait_job(client, after["id"])["status"] == "succeeded"


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"redis": "ok", "storage": "ok", "worker": "ok"}}


def test_speed_options_are_job_options(client: httpx.Client) -> None:
    """`step_cache` is recorded and changes the output; `fp8` on a worker without FP8 weights fails clearly."""
    body = {
        "prompt": "x",
        "seed": 9,
        "num_inference_steps": 8,
        "width": 64,
        "height": 48,
        "image_base64": base64.b64encode(sample_image(64, 48)).decode(),
    }
    exact = wait_job(client, client.post("/v1/edits", json=body).json()["id"])
    cached = wait_job(client, client.post("/v1/edits", json={**body, "step_cache": 0.5}).json()["id"])
    assert cached["status"] == "succeeded" and cached["params"]["step_cache"] == 0.5
    pixels = [
        np.asarray(Image.open(io.BytesIO(download(j["outputs"]["image"]["url"])))).astype(int) for j in (exact, cached)
    ]
    assert np.abs(pixels[0] - pixels[1]).max() > 2

    fp8 = wait_job(client, client.post("/v1/edits", json={**body, "fp8": True}).json()["id"])
    assert fp8["status"] == "failed" and fp8["error"]["code"] == "fp8_unavailable"


def test_the_workers_main_process_never_loads_torch(stack: Stack) -> None:
    """Celery forks the pool child that loads the model from the worker's main process, and torch refuses CUDA in a
    child forked from a process that initialised it (a library's import-time `torch.cuda.is_available()` is enough):
    on a GPU the worker would never load. So torch is in the child's memory and not in the main process's."""
    main = psutil.Process(next(w for w in stack.workers if w.name == "worker-1").process.pid)

    def loads_torch(process: psutil.Process) -> bool:
        return any("libtorch" in region.path for region in process.memory_maps())

    assert not loads_torch(main)
    children = main.children()
    assert children and all(loads_torch(child) for child in children)
