"""The API process: runs without torch, refuses placeholder secrets outside dev mode, publishes an OpenAPI document
that matches the committed one, and reports readiness part by part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from service.api.app import create_app
from service.api.openapi import DOCUMENT_PATH, render
from service.cli.processes import Child, free_port, python_module, wait_http
from service.settings import ApiSettings


def test_openapi_document_is_up_to_date() -> None:
    generated = render(create_app(ApiSettings(dev_mode=True)))
    assert DOCUMENT_PATH.read_text() == generated, "run `make openapi` and commit openapi/openapi.json"


def test_openapi_documents_both_request_bodies_and_errors() -> None:
    document = json.loads(DOCUMENT_PATH.read_text())
    create = document["paths"]["/v1/edits"]["post"]
    assert set(create["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert set(create["responses"]) >= {"202", "400", "413", "415", "422"}
    schema = document["components"]["schemas"]["EditCreate"]
    assert schema["properties"]["num_inference_steps"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 100}
    assert schema["properties"]["kind"]["enum"] == ["edit", "upscale", "sketch"]
    assert schema["properties"]["mode"]["anyOf"][0]["enum"] == ["standard", "fast", "turbo"]
    assert schema["properties"]["scale"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 1.0, "maximum": 8.0}
    assert "/v1/edits/{job_id}/cancel" in document["paths"] and "/v1/models" in document["paths"]
    assert document["components"]["schemas"]["JobStatus"]["enum"] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
    ]


BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "diffusers", "transformers"):
                raise ImportError(f"{name} is blocked: the API must not import it")
    sys.meta_path.insert(0, Block())
    """
)


def test_api_runs_without_torch(redis_server: str) -> None:
    script = BLOCK_TORCH + textwrap.dedent(
        f"""
        import os
        os.environ["CHRONOEDIT_REDIS_URL"] = "{redis_server}/62"
        os.environ["CHRONOEDIT_DEV_MODE"] = "true"
        from fastapi.testclient import TestClient
        from service.api.app import create_app
        import service.cli, service.jobs.system, service.storage, service.jobs.queue, service.webhooks.worker
        with TestClient(create_app()) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 503
            assert client.get("/openapi.json").status_code == 200
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.stack
def test_readiness_names_the_missing_part(make_stack) -> None:
    stack = make_stack("noworker")
    stack.start_api()
    with stack.client() as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"redis": "ok", "storage": "ok", "worker": "no worker registered"}

    broken = make_stack("nostorage", CHRONOEDIT_S3_CREATE_BUCKET="false")
    broken.start_api()
    with broken.client() as client:
        checks = client.get("/readyz").json()["checks"]
    assert checks["redis"] == "ok" and checks["storage"].startswith("unusable")


def test_every_setting_is_documented() -> None:
    from pathlib import Path

    from service.enhance.settings import EnhancerSettings
    from worker.settings import WorkerSettings

    documented = (Path(__file__).resolve().parent.parent / "deploy" / "README.md").read_text()
    for name in {*ApiSettings.model_fields, *WorkerSettings.model_fields, *EnhancerSettings.model_fields}:
        assert f"`{name.upper()}`" in documented, f"CHRONOEDIT_{name.upper()} is not in deploy/README.md"


def test_openapi_documents_the_client_contract() -> None:
    document = json.loads(DOCUMENT_PATH.read_text())
    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <API key>`; keys come from `chronoedit keys create`.",
    }
    create = document["paths"]["/v1/edits"]["post"]
    assert create["security"] == [{"ApiKey": []}]
    assert {p["name"] for p in create["parameters"] if p["in"] == "header"} == {"idempotency-key", "prefer"}
    assert set(create["responses"]) >= {"200", "202", "401", "409", "429"}
    assert "Retry-After" in create["responses"]["429"]["headers"]
    assert "Idempotent-Replayed" in create["responses"]["202"]["headers"]
    events = document["paths"]["/v1/edits/{job_id}/events"]["get"]["responses"]["200"]
    assert list(events["content"]) == ["text/event-stream"]
    assert set(document["paths"]["/v1/edits"]) == {"get", "post"}
    assert "delete" in document["paths"]["/v1/edits/{job_id}"]
    assert "post" in document["paths"]["/v1/edits/{job_id}/deliveries/{delivery_id}/retry"]
    assert "post" in document["paths"]["/v1/uploads"]
    webhook = document["webhooks"]["edit-event"]["post"]
    assert webhook["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/WebhookEvent")
    codes = document["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
    for code in ("unauthorized", "rate_limited", "concurrency_limit", "idempotency_key_reuse", "webhook_url_forbidden"):
        assert code in codes
    assert (
        "healthz" in json.dumps(document["paths"]["/healthz"])
        and "security" not in document["paths"]["/healthz"]["get"]
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CHRONOEDIT_STORAGE_BACKEND": "local"}, "CHRONOEDIT_URL_SIGNING_SECRET"),
        (
            {
                "CHRONOEDIT_STORAGE_BACKEND": "s3",
                "CHRONOEDIT_S3_ACCESS_KEY_ID": "chronoedit",
                "CHRONOEDIT_S3_SECRET_ACCESS_KEY": "change-me-minio-secret",
            },
            "CHRONOEDIT_S3_SECRET_ACCESS_KEY",
        ),
    ],
    ids=["built-in signing secret", "example S3 secret"],
)
def test_api_refuses_placeholder_secrets_outside_dev_mode(redis_server: str, env: dict[str, str], named: str) -> None:
    base = {**os.environ, "CHRONOEDIT_REDIS_URL": f"{redis_server}/62", "CHRONOEDIT_PORT": str(free_port()), **env}
    base.pop("CHRONOEDIT_DEV_MODE", None)
    refused = subprocess.run(
        python_module("service.cli", "api"), env=base, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode != 0 and named in refused.stderr, refused.stderr[-2000:]
    assert "CHRONOEDIT_DEV_MODE=true" in refused.stderr, "the message says how to run a development API"
    child = Child("dev-api", python_module("service.cli", "api"), {**base, "CHRONOEDIT_DEV_MODE": "true"})
    try:
        wait_http(f"http://127.0.0.1:{base['CHRONOEDIT_PORT']}/healthz", child)
    finally:
        child.stop()
