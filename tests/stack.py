"""A real stack for tests: redis-server, an S3-compatible server (moto in server mode), Celery worker processes and
the API, each a separate process on free loopback ports. Nothing is mocked."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
from PIL import Image

from service.cli.processes import Child, free_port, python_module, wait_for_port, wait_http

S3_ENV = {
    "CHRONOEDIT_STORAGE_BACKEND": "s3",
    "CHRONOEDIT_S3_ACCESS_KEY_ID": "testing",
    "CHRONOEDIT_S3_SECRET_ACCESS_KEY": "testing",
    "CHRONOEDIT_S3_REGION": "us-east-1",
    "CHRONOEDIT_S3_CREATE_BUCKET": "true",
}
DEFAULT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"test-default-webhook-secret-32b!").decode()
"""Signs webhooks of jobs submitted without a key (the stacks run in the anonymous loopback mode)."""


def start_moto(log: Path) -> tuple[Child, str]:
    port = free_port()
    child = Child("moto", python_module("moto.server", "-H", "127.0.0.1", "-p", str(port)), log=log)
    wait_for_port(port, child)
    return child, f"http://127.0.0.1:{port}"


@dataclass
class ApiKeyInfo:
    id: str
    key: str
    webhook_secret: str
    tenant: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Stack:
    """One isolated deployment: its own Redis database (so its own Celery queues), bucket and API."""

    name: str
    env: dict[str, str]
    logs: Path
    api: Child | None = None
    workers: list[Child] = field(default_factory=list)
    base_url: str = ""

    def start_api(self, **overrides: str) -> None:
        port = free_port()
        env = {**self.env, "CHRONOEDIT_PORT": str(port), **overrides}
        self.api = Child("api", python_module("service.cli", "api"), env, log=self.logs / f"{self.name}-api.log")
        self.base_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.base_url}/healthz", self.api)

    def start_worker(self, name: str, wait_ready: bool = True, env: dict[str, str] | None = None) -> Child:
        env = {**self.env, "CHRONOEDIT_WORKER_NAME": name, **(env or {})}
        worker = Child(name, python_module("service.cli", "worker"), env, log=self.logs / f"{self.name}-{name}.log")
        self.workers.append(worker)
        if wait_ready:
            self.wait_worker_ready(name, worker)
        return worker

    def start_worker_group(self, name: str, gpus: int = 2, wait_ready: bool = True, **env: str) -> Child:
        """A worker group as an operator starts one, `chronoedit worker --gpus N` (torchrun; gloo ranks on CPU)."""
        env = {**self.env, "CHRONOEDIT_WORKER_NAME": name, **env}
        argv = python_module("service.cli", "worker", "--gpus", str(gpus))
        group = Child(name, argv, env, log=self.logs / f"{self.name}-{name}.log")
        self.workers.append(group)
        if wait_ready:
            self.wait_worker_ready(name, group)
        return group

    def start_enhancer(self, name: str, env: dict[str, str] | None = None, timeout: float = 120) -> Child:
        """A prompt enhancer worker (`chronoedit enhancer-worker`), waited for until it announces itself ready."""
        env = {**self.env, "CHRONOEDIT_WORKER_NAME": name, **(env or {})}
        enhancer = Child(
            name, python_module("service.cli", "enhancer-worker"), env, log=self.logs / f"{self.name}-{name}.log"
        )
        self.workers.append(enhancer)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert enhancer.alive(), f"enhancer {name} died; log:\n{self.log(name)}"
            if any(w["name"] == name and w.get("ready") for w in self.registered_workers()):
                return enhancer
            time.sleep(0.3)
        raise TimeoutError(f"enhancer {name} not ready; log:\n{self.log(name)}")

    def start_webhook_worker(self) -> Child:
        """The webhook delivery worker (Celery, no model), as `chronoedit webhook-worker` runs it."""
        log = self.logs / f"{self.name}-webhooks.log"
        worker = Child("webhooks", python_module("service.cli", "webhook-worker"), self.env, log=log)
        self.workers.append(worker)
        return worker

    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.env["CHRONOEDIT_REDIS_URL"])

    def create_key(self, tenant: str, *options: str) -> ApiKeyInfo:
        """An API key made by the admin command, `chronoedit keys create`, as an operator would."""
        argv = python_module("service.cli", "keys", "create", tenant, *options)
        result = subprocess.run(argv, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        fields = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
        return ApiKeyInfo(fields["key id"].strip(), fields["API key"].strip(), fields["webhook secret"].strip(), tenant)

    def wait_worker_ready(self, name: str, worker: Child, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert worker.alive(), f"worker {name} died; log:\n{self.log(name)}"
            ready = self.client().get("/readyz").json()
            if ready["status"] == "ready" and any(
                w.get("name") == name and w.get("ready") for w in self.registered_workers()
            ):
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker {name} not ready; log:\n{self.log(name)}")

    def registered_workers(self) -> list[dict[str, Any]]:
        import redis

        client = redis.Redis.from_url(self.env["CHRONOEDIT_REDIS_URL"])
        keys = list(client.scan_iter(match=f"{self.env['CHRONOEDIT_KEY_PREFIX']}:worker:*"))
        return [json.loads(v) for v in client.mget(keys)] if keys else []

    def worker_metrics_url(self, worker: str) -> str:
        """The worker's own Prometheus endpoint, as it announced it in the registry."""
        info = next(w for w in self.registered_workers() if w["name"] == worker)
        assert isinstance(info["metrics_port"], int) and info["metrics_port"] > 0, info
        return f"http://127.0.0.1:{info['metrics_port']}/metrics"

    def log(self, name: str, tail: int | None = 6000) -> str:
        """The process's log, its last `tail` characters (None: all of it)."""
        path = self.logs / f"{self.name}-{name}.log"
        return path.read_text(errors="replace")[-(tail or 0) :] if path.exists() else "(no log)"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.env["CHRONOEDIT_S3_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    @property
    def bucket(self) -> str:
        return self.env["CHRONOEDIT_S3_BUCKET"]

    def stop(self) -> None:
        for child in [*self.workers, *([self.api] if self.api else [])]:
            child.stop()


def wait_job(
    client: httpx.Client,
    job_id: str,
    timeout: float = 120,
    until: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> dict:
    """Poll until the job is terminal (or in one of `until`)."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/edits/{job_id}", headers=headers or {}).json()
        if job["status"] in ("succeeded", "failed", "canceled", *until):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job.get('status')} after {timeout} s: {job}")


def sample_image(width: int = 96, height: int = 64, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A deterministic synthetic photo: a gradient with a coloured box."""
    image = Image.new("RGB", (width, height))
    pixels = image.load()
    for y in range(height):
        for x in range(width):
            pixels[x, y] = ((x * 255) // width, (y * 255) // height, (seed * 37) % 256)
    for y in range(height // 4, height // 2):
        for x in range(width // 3, width // 2):
            pixels[x, y] = (200, 30, 30)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
