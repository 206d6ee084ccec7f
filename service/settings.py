"""Typed settings, read once per process from `CHRONOEDIT_*` environment variables (or a `.env` file).

`CommonSettings` is what the API and the workers must agree on (Redis, storage, job leases); `ApiSettings` adds the
HTTP side's limits. The worker's settings live in `worker/settings.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.logs import LogFormat

DEV_SIGNING_SECRET = "dev-only-change-me"  # noqa: S105 - the development default, refused outside dev mode
EXAMPLE_SECRET_MARKER = "change-me"  # noqa: S105 - a marker looked for in secrets, not one
"""Placeholder secrets (the built-in default, `.env.example`) contain this; a production API refuses them."""


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHRONOEDIT_", env_file=".env", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker and job records.")
    key_prefix: str = Field("chronoedit", description="Prefix of every Redis key this service writes.")

    storage_backend: Literal["local", "s3"] = Field("local", description="Where inputs and outputs are kept.")
    storage_dir: Path = Field(Path("var/storage"), description="Root folder of the local storage backend.")
    s3_bucket: str = Field("chronoedit", description="Bucket for inputs and outputs (S3 backend).")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); None for AWS.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: str | None = Field(None, description="S3 access key; None uses boto3's usual lookup.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    s3_create_bucket: bool = Field(False, description="Create the bucket at start if it does not exist.")

    url_signing_secret: SecretStr = Field(
        SecretStr(DEV_SIGNING_SECRET),
        description="HMAC key of the local backend's download and upload URLs; the default is refused outside "
        "`DEV_MODE`.",
    )
    url_ttl_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600, description="Lifetime of download URLs.")

    lease_seconds: float = Field(60.0, gt=0, description="A running job whose worker is silent this long is re-run.")
    max_attempts: int = Field(3, ge=1, le=20, description="Attempts before a job whose worker keeps dying fails.")
    republish_after_seconds: float = Field(
        1800.0, gt=0, description="A job still queued this long has its message published again (lost messages)."
    )
    visibility_timeout_seconds: int = Field(
        6 * 3600,
        ge=1,
        description="Redis transport visibility timeout: an unacknowledged message is delivered again after it. Keep "
        "it above the longest job; a shorter one only costs a redelivery that the job's claim drops.",
    )

    enhance_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="A job waits this long for its prompt enhancement (queue and enhancer together); then it fails "
        "`enhancer_unavailable` or runs with the user's prompt, by its policy. `POST /v1/prompts/enhance` waits as "
        "long.",
    )

    output_retention_seconds: int = Field(
        7 * 24 * 3600, ge=1, description="Inputs and outputs of finished jobs are deleted this long after they end."
    )

    dev_mode: bool = Field(
        False,
        description="Development: the API accepts the built-in URL-signing secret and example secrets (values with "
        "`change-me`, as in `.env.example`). `chronoedit serve` turns it on; deployments leave it off.",
    )
    batch_open_idle_seconds: float = Field(
        24 * 3600,
        gt=0,
        description="An open batch that takes no items for this long is closed (and completes when its items are "
        "done), so a client that never closes it does not leave it open for ever.",
    )
    log_format: LogFormat = Field("json", description="`json` (one object per line) or `plain` log lines.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lowest level logged.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_s3(self) -> CommonSettings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("CHRONOEDIT_S3_BUCKET is required when CHRONOEDIT_STORAGE_BACKEND=s3")
        return self


class ApiSettings(CommonSettings):
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API binds to.")

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest accepted input file.")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="Largest accepted input, width x height.")
    max_output_side: int = Field(2048, ge=16, description="Longest allowed output side.")
    max_output_pixels: int = Field(
        2048 * 1536,
        ge=256,
        description="Largest allowed output area. 2048x2048 does not fit beside the 14B model on a 141 GB H200 "
        "(bench/results/memory_profile_h200.json); workers also refuse what their GPU cannot hold.",
    )
    max_upscale_side: int = Field(2048, ge=16, description="Longest side an `upscale` job may produce.")
    fetch_timeout_seconds: float = Field(10.0, gt=0, description="Timeout when fetching an `image_url`.")
    fetch_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts or IPs an `image_url` may name even when they resolve to private or loopback addresses.",
    )
    reconcile_interval_seconds: float = Field(
        5.0, gt=0, description="How often the API re-enqueues jobs whose worker lease expired."
    )
    ready_worker_required: bool = Field(True, description="`/readyz` needs at least one ready worker.")
    metrics_queues: list[str] = Field(
        default_factory=lambda: ["edits", "batch"],
        description="Celery queues whose depth `/metrics` reports, besides those registered workers consume.",
    )

    # --- clients: keys and limits, webhooks, idempotency, waiting, retention, uploads ------------------------------
    auth_required: bool = Field(
        True,
        description="Every `/v1` request needs `Authorization: Bearer <key>`. Off: requests without a key belong to "
        "the `default` tenant (allowed only when the API binds to loopback); keys given are still honoured.",
    )
    rate_limit_per_minute: int = Field(600, ge=1, description="Requests per minute per API key (fixed window).")
    max_concurrent_jobs: int = Field(
        20, ge=1, description="Unfinished jobs one API key may have at once; more answer 429 `concurrency_limit`."
    )
    default_webhook_secret: SecretStr | None = Field(
        None, description="`whsec_...` secret that signs webhooks of jobs submitted without a key (auth off)."
    )
    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts or IPs a `webhook` URL may name even when they resolve to private or loopback addresses "
        "(http is then accepted too).",
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60, description="Timeout of one webhook delivery attempt.")
    webhook_retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        description="Delays before each retry of a failed webhook delivery (about 27.6 h in all by default); "
        "each is jittered by +-20%. After the last, the delivery is `failed`.",
    )
    webhook_dispatch_interval_seconds: float = Field(
        1.0, gt=0, description="How often the webhook worker looks for deliveries that are due."
    )
    public_base_url: str | None = Field(
        None, description="Base URL of the API as clients reach it; makes local-storage URLs in webhooks absolute."
    )
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60, description="How long an `Idempotency-Key` is kept.")
    idempotency_wait_seconds: float = Field(
        10.0, ge=0, description="How long a duplicate request waits for the first one before answering 409."
    )
    max_wait_seconds: int = Field(60, ge=0, le=60, description="Largest `Prefer: wait=N` honoured.")
    max_batch_items: int = Field(
        1000, ge=1, le=100_000, description="Items one `POST /v1/batches` (or `.../items`) request may carry."
    )
    max_queued_batch_items: int = Field(
        100_000,
        ge=1,
        description="Batch items one tenant may have waiting in the batch lane; an append beyond it answers 429 "
        "`batch_limit` (batch items do not count against `MAX_CONCURRENT_JOBS`).",
    )
    batch_intake_concurrency: int = Field(
        8, ge=1, le=64, description="Items of one batch request read, validated and stored at the same time."
    )
    upload_ttl_seconds: int = Field(3600, ge=60, description="Lifetime of a `POST /v1/uploads` URL.")

    # --- prompt enhancement ------------------------------------------------------------------------------------------
    enhance_prompt_defaults: dict[Literal["edit", "sketch"], Literal["off", "required", "best_effort"]] = Field(
        default_factory=dict,
        description="Per kind, whether jobs that do not say `enhance_prompt` are enhanced, and with which failure "
        'policy (JSON, e.g. `{"edit": "best_effort"}`); default off. Never for `upscale` (its prompt is fixed).',
    )
    enhance_policy: Literal["required", "best_effort"] = Field(
        "best_effort", description="The failure policy of `enhance_prompt: true`."
    )

    def placeholder_secrets(self) -> list[str]:
        """The settings that still hold a placeholder secret (empty in a deployment fit to start)."""
        secrets = {
            "S3_SECRET_ACCESS_KEY": self.s3_secret_access_key,
            "DEFAULT_WEBHOOK_SECRET": self.default_webhook_secret,
        }
        if self.storage_backend == "local":  # the only backend whose URLs it signs
            secrets["URL_SIGNING_SECRET"] = self.url_signing_secret
        return sorted(
            f"CHRONOEDIT_{name}"
            for name, value in secrets.items()
            if value is not None and EXAMPLE_SECRET_MARKER in value.get_secret_value()
        )

    def require_real_secrets(self) -> None:
        """Refuse to serve with a placeholder secret unless in dev mode (a forged download URL, a guessable webhook
        signature)."""
        placeholders = self.placeholder_secrets()
        if placeholders and not self.dev_mode:
            raise ValueError(
                f"{', '.join(placeholders)} still hold a placeholder value (the built-in default, or `change-me` from "
                ".env.example); set real secrets, or CHRONOEDIT_DEV_MODE=true for development"
            )

    @model_validator(mode="after")
    def _anonymous_only_on_loopback(self) -> ApiSettings:
        if not self.auth_required and self.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(
                f"CHRONOEDIT_AUTH_REQUIRED=false is allowed only when the API binds to loopback, not {self.host}"
            )
        return self
