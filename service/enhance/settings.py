"""The enhancer worker's settings: what it shares with the API (`CommonSettings`) plus its backend."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from service.settings import CommonSettings


class EnhancerSettings(CommonSettings):
    enhancer_backend: Literal["local", "remote"] = Field(
        "local",
        description="`local`: a Qwen-VL model loaded with transformers in this process (`ENHANCER_MODEL_DIR`); "
        "`remote`: an OpenAI-compatible chat-completions endpoint that accepts images (`ENHANCER_URL`).",
    )
    enhancer_model_dir: Path | None = Field(
        None,
        description="local: a Qwen-VL folder in transformers layout (Qwen3-VL-30B-A3B-Instruct, Qwen2.5-VL-7B...).",
    )
    enhancer_device: str = Field("auto", description="local: `auto`, `cpu`, `cuda` or `cuda:N`.")
    enhancer_url: str | None = Field(
        None, description="remote: the endpoint's base URL, e.g. `http://vllm:8000/v1` (a vLLM server)."
    )
    enhancer_api_key: SecretStr | None = Field(None, description="remote: the endpoint's API key, if it wants one.")
    enhancer_model: str = Field(
        "Qwen/Qwen3-VL-30B-A3B-Instruct", description="remote: the model name the endpoint serves."
    )
    enhancer_request_timeout_seconds: float = Field(
        30.0, gt=0, description="remote: timeout of one chat-completions request."
    )
    enhancer_max_retries: int = Field(
        2, ge=0, le=10, description="remote: retries (with backoff) of a request that timed out or got 408/429/5xx."
    )
    enhancer_max_new_tokens: int = Field(
        200, ge=1, le=2000, description="Longest answer, in tokens (100 words are about 130 tokens)."
    )
    enhancer_temperature: float = Field(
        0.0, ge=0, le=2, description="remote: sampling temperature; 0 repeats answers (local always decodes greedily)."
    )
    enhancer_image_side: int = Field(
        1024, ge=64, le=4096, description="The image is scaled down to this long side before the model sees it."
    )
    enhancer_concurrency: int = Field(
        4, ge=1, le=64, description="remote: requests in flight per enhancer worker (a local model runs one at a time)."
    )
    worker_name: str = Field(
        default_factory=lambda: f"enhancer-{socket.gethostname()}-{os.getpid()}", description="Name in the registry."
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often the worker renews its registration.")
    proc_alive_timeout_seconds: float = Field(
        600.0, gt=0, description="How long Celery waits for a child to load the model (DESIGN.md: above load time)."
    )
    max_image_bytes: int = Field(100 * 1024 * 1024, description="Largest input the worker will decode.")
    max_image_pixels: int = Field(100_000_000, description="Largest input area the worker will decode.")
    metrics_host: str = Field("127.0.0.1", description="Address the worker's Prometheus exporter binds to.")
    metrics_port: int = Field(9400, ge=0, le=65535, description="Port of the Prometheus exporter; 0 picks a free one.")

    @model_validator(mode="after")
    def _check_backend(self) -> EnhancerSettings:
        if self.enhancer_backend == "local" and self.enhancer_model_dir is None:
            raise ValueError(
                "CHRONOEDIT_ENHANCER_BACKEND=local needs CHRONOEDIT_ENHANCER_MODEL_DIR (a Qwen-VL folder); or set "
                "CHRONOEDIT_ENHANCER_BACKEND=remote and CHRONOEDIT_ENHANCER_URL"
            )
        if self.enhancer_backend == "remote" and not self.enhancer_url:
            raise ValueError("CHRONOEDIT_ENHANCER_BACKEND=remote needs CHRONOEDIT_ENHANCER_URL")
        return self
