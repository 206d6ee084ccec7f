"""The deployment files, checked with the tools operators use, and the images built and run.

- `docker-compose.yml` and the Kubernetes manifests validate (`docker-compose config`, kubectl's kustomize,
  `kubernetes-validate`), every service runs a real `chronoedit` command and sets only settings the service declares;
- the Prometheus configurations and rules pass `promtool`;
- both images build on a local Debian base (no registry is reachable here), and an edit runs end to end with the API,
  webhook worker and GPU worker (CPU torch, the tiny model) each in a container from those images, against Redis,
  an S3-compatible server and a webhook receiver on loopback.

Run by `make deploy-check` (marker `deploy`): it needs Docker's daemon, docker-compose, promtool, debootstrap and
kubectl, which `.ci/run` installs or checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes_validate import validate as kubernetes_validate

from service.cli.main import build_parser
from service.cli.processes import free_port
from service.enhance.settings import EnhancerSettings
from service.settings import ApiSettings
from tests.receiver import Receiver, start_receiver
from tests.stack import DEFAULT_WEBHOOK_SECRET, sample_image
from worker.settings import WorkerSettings

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SETTINGS = {
    f"CHRONOEDIT_{name.upper()}"
    for name in (*ApiSettings.model_fields, *WorkerSettings.model_fields, *EnhancerSettings.model_fields)
}
QUEUES = {"edits", "batch", "reasoning"}
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
"""Debian's client, which builds with the daemon's own BuildKit (a newer client elsewhere on PATH may expect buildx)."""
BASE_IMAGE = "chronoedit-base:bookworm"


def run(*argv: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def assert_chronoedit_command(argv: list[str], where: str) -> None:
    """`argv` is a command line the `chronoedit` entry point accepts."""
    assert argv[0] == "chronoedit", f"{where}: {argv} is not the chronoedit command"
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        raise AssertionError(f"{where}: `{' '.join(argv)}` is not a chronoedit command line") from exc


# --- docker-compose ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it, with the example environment."""
    result = run("docker-compose", "--env-file", ".env.example", "config", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_compose_services_run_chronoedit_commands_with_declared_settings(compose: dict[str, Any]) -> None:
    ours = {name: s for name, s in compose["services"].items() if str(s.get("image", "")).startswith("chronoedit-")}
    assert set(ours) == {"api", "webhooks", "worker", "worker-reasoning", "enhancer"}
    for name, service in ours.items():
        assert_chronoedit_command(service["command"], f"compose service {name}")
        unknown = {k for k in service.get("environment", {}) if k.startswith("CHRONOEDIT_")} - SETTINGS
        assert not unknown, f"compose service {name} sets undeclared settings {unknown}"
    assert ours["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    assert json.loads(ours["worker"]["environment"]["CHRONOEDIT_QUEUES"])[0] == "edits", "interactive edits first"


def test_every_compose_service_has_a_health_check_and_waits_for_what_it_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name != "minio-init":  # a one-shot job: compose waits for it to complete instead
            assert "healthcheck" in service, f"compose service {name} has no health check"
        for needed, how in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if needed == "minio-init" else "service_healthy"
            assert how["condition"] == expected, f"{name} -> {needed}"
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    for name in ("worker", "worker-reasoning"):
        assert services[name]["volumes"][0].endswith(":/models/chronoedit:ro"), "weights are mounted read-only"


def test_example_environment_holds_placeholders_the_api_refuses() -> None:
    lines = [line for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line and line[0] != "#"]
    values = dict(line.split("=", 1) for line in lines)
    settings = ApiSettings(
        storage_backend="s3", s3_access_key_id="chronoedit", s3_secret_access_key=values["MINIO_ROOT_PASSWORD"]
    )
    assert settings.placeholder_secrets() == ["CHRONOEDIT_S3_SECRET_ACCESS_KEY"]
    with pytest.raises(ValueError, match="placeholder"):
        settings.require_real_secrets()


# --- Kubernetes -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """The example overlay as kustomize renders it."""
    result = run("kubectl", "kustomize", str(K8S / "overlays" / "example"))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_manifests_are_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    core = [doc for doc in rendered if not doc["apiVersion"].startswith("keda.sh/")]
    for doc in core:
        kubernetes_validate(doc, "1.30.0", strict=True)
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered}
    assert {
        ("Deployment", "chronoedit-api"), ("Service", "chronoedit-api"), ("HorizontalPodAutoscaler", "chronoedit-api"),
        ("Deployment", "chronoedit-webhooks"), ("Deployment", "chronoedit-worker"),
        ("Deployment", "chronoedit-worker-reasoning"), ("PodDisruptionBudget", "chronoedit-worker"),
        ("ScaledObject", "chronoedit-worker"), ("ScaledObject", "chronoedit-worker-reasoning"),
        ("ConfigMap", "chronoedit-config"), ("Secret", "chronoedit-secrets"),
    } <= kinds  # fmt: skip


def test_containers_run_chronoedit_commands_with_declared_settings(rendered: list[dict[str, Any]]) -> None:
    config = next(doc for doc in rendered if doc["kind"] == "ConfigMap")
    secret = next(doc for doc in rendered if doc["kind"] == "Secret")
    assert set(config["data"]) | set(secret["stringData"]) <= SETTINGS
    for doc in (d for d in rendered if d["kind"] == "Deployment"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert_chronoedit_command(container["command"], doc["metadata"]["name"])
            unknown = {e["name"] for e in container.get("env", []) if e["name"].startswith("CHRONOEDIT_")} - SETTINGS
            assert not unknown, f"{doc['metadata']['name']} sets undeclared settings {unknown}"


def test_gpu_workers_ask_for_gpus_probe_readiness_and_finish_their_job(rendered: list[dict[str, Any]]) -> None:
    workers = {
        d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment" and "worker" in d["metadata"]["name"]
    }
    for name, worker in workers.items():
        pod = worker["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert pod["terminationGracePeriodSeconds"] >= 600, f"{name}: time to finish the running job"
        assert any(m.get("readOnly") for m in container["volumeMounts"]), f"{name}: weights mounted read-only"


def test_workers_scale_on_the_queues_they_consume(rendered: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment"}
    for scaled in (d for d in rendered if d["kind"] == "ScaledObject"):
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        env = {e["name"]: e.get("value") for e in target["spec"]["template"]["spec"]["containers"][0]["env"]}
        consumed = set(json.loads(env.get("CHRONOEDIT_QUEUES") or env["CHRONOEDIT_GROUP_QUEUES"]))
        scaled_on = {t["metadata"]["listName"] for t in scaled["spec"]["triggers"] if t["type"] == "redis"}
        assert scaled_on == consumed and scaled_on <= QUEUES, scaled["metadata"]["name"]


# --- Prometheus -------------------------------------------------------------------------------------------------


def test_prometheus_configurations_and_rules_pass_promtool(tmp_path: Path) -> None:
    checked = run("promtool", "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The compose configuration names its rules where the container mounts them; check it beside a copy of them.
    compose_config = (ROOT / "deploy" / "compose" / "prometheus.yml").read_text()
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(compose_config.replace("/etc/prometheus/alerts.yml", "alerts.yml"))
    checked = run("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0 and "rule files found" in checked.stdout, checked.stdout + checked.stderr


# --- images -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_image() -> str:
    """A Debian bookworm base image made from Debian's packages (`debootstrap`), since no registry is reachable."""
    if run(DOCKER, "image", "inspect", BASE_IMAGE).returncode != 0:
        with tempfile.TemporaryDirectory() as folder:
            rootfs = Path(folder) / "rootfs"
            made = run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), timeout=600)
            assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
            imported = subprocess.run(
                f"tar -C {rootfs} -c . | {DOCKER} import - {BASE_IMAGE}", shell=True, capture_output=True, timeout=300
            )
            assert imported.returncode == 0, imported.stderr
    return BASE_IMAGE


def pip_cert() -> list[str]:
    """The CA bundle pip uses on this machine (`PIP_CERT`, or `cert` in pip's configuration), as a build secret: it
    lets pip inside the build reach the package registry and never enters an image layer."""
    listed = run("pip", "config", "list").stdout
    found = re.findall(r"\.cert='([^']+)'", listed)
    cert = os.environ.get("PIP_CERT") or (found[0] if found else "")
    return ["--secret", f"id=pip_cert,src={cert}"] if cert and Path(cert).is_file() else []


@pytest.fixture(scope="module")
def torch_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The CPU torch wheel pip finds for this machine, served on loopback for the GPU image's build."""
    folder = tmp_path_factory.mktemp("torch-wheel")
    got = run("pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), "torch==2.13.0", timeout=600)
    assert got.returncode == 0, got.stderr[-2000:]
    [wheel] = folder.glob("torch-*.whl")
    port = free_port()
    server = subprocess.Popen(
        ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"torch@http://127.0.0.1:{port}/{wheel.name}"
    server.terminate()


def build(dockerfile: str, tag: str, base: str, *args: str) -> None:
    argv = [DOCKER, "build", "--network", "host", "-f", dockerfile, "-t", tag, "--build-arg", f"BASE_IMAGE={base}"]
    env = {"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    result = run(*argv, *pip_cert(), *args, str(ROOT), timeout=1200, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def images(base_image: str, torch_wheel: str) -> dict[str, str]:
    build("Dockerfile", "chronoedit-api:check", base_image)
    build("Dockerfile.gpu", "chronoedit-worker:check", base_image, "--build-arg", f"TORCH_SPEC={torch_wheel}")
    return {"api": "chronoedit-api:check", "worker": "chronoedit-worker:check"}


def test_the_api_image_has_no_torch_and_runs_as_a_user(images: dict[str, str]) -> None:
    probe = "import sys, service.api.app, service.webhooks.worker; print('torch' in sys.modules)"
    result = run(DOCKER, "run", "--rm", images["api"], "python3", "-c", probe)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
    assert run(DOCKER, "run", "--rm", images["api"], "id", "-u").stdout.strip() == "10001"


def test_the_gpu_image_has_the_model_code(images: dict[str, str]) -> None:
    helped = run(DOCKER, "run", "--rm", images["worker"], "chronoedit", "worker", "--help")
    assert helped.returncode == 0 and "usage: chronoedit worker" in helped.stdout, helped.stderr
    probe = "import torch, diffusers, worker.runtime; print(diffusers.__version__)"
    imported = run(DOCKER, "run", "--rm", images["worker"], "python3", "-c", probe)
    assert imported.returncode == 0 and imported.stdout.strip() == "0.42.1", imported.stderr[-2000:]


class Containers:
    """`docker run -d` with host networking (loopback only); stopped and removed at the end."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def start(self, image: str, env: dict[str, str], *argv: str, volumes: tuple[str, ...] = ()) -> str:
        flags = [f"--env={name}={value}" for name, value in env.items()] + [f"--volume={v}" for v in volumes]
        started = run(DOCKER, "run", "-d", "--network", "host", *flags, image, *argv)
        assert started.returncode == 0, started.stderr
        self.ids.append(started.stdout.strip())
        return self.ids[-1]

    def logs(self) -> str:
        return "\n".join(run(DOCKER, "logs", "--tail", "40", c).stderr for c in self.ids)

    def remove(self) -> None:
        for container in self.ids:
            run(DOCKER, "rm", "-f", container)


@pytest.fixture
def containers() -> Iterator[Containers]:
    started = Containers()
    yield started
    started.remove()


@pytest.fixture
def readable_model(tiny_model: Path) -> Iterator[Path]:
    """The tiny model where the image's unprivileged user can read it."""
    folder = Path(tempfile.mkdtemp(prefix="chronoedit-model-"))
    shutil.copytree(tiny_model, folder / "model")
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield folder / "model"
    shutil.rmtree(folder)


def test_an_edit_runs_through_the_containers(
    images: dict[str, str], containers: Containers, redis_server: str, s3_endpoint: str, readable_model: Path
) -> None:
    receiver, server = start_receiver()
    port = free_port()
    env = {
        "CHRONOEDIT_REDIS_URL": f"{redis_server}/59",
        "CHRONOEDIT_KEY_PREFIX": "containers",
        "CHRONOEDIT_STORAGE_BACKEND": "s3",
        "CHRONOEDIT_S3_ENDPOINT_URL": s3_endpoint,
        "CHRONOEDIT_S3_BUCKET": "bucket-containers",
        "CHRONOEDIT_S3_ACCESS_KEY_ID": "testing",
        "CHRONOEDIT_S3_SECRET_ACCESS_KEY": "testing",
        "CHRONOEDIT_S3_CREATE_BUCKET": "true",
        "CHRONOEDIT_HOST": "127.0.0.1",
        "CHRONOEDIT_PORT": str(port),
        "CHRONOEDIT_AUTH_REQUIRED": "false",
        "CHRONOEDIT_DEFAULT_WEBHOOK_SECRET": DEFAULT_WEBHOOK_SECRET,
        "CHRONOEDIT_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    }
    try:
        containers.start(images["api"], env, "chronoedit", "api")
        containers.start(images["api"], env, "chronoedit", "webhook-worker")
        worker_env = {**env, "CHRONOEDIT_DEVICE": "cpu", "CHRONOEDIT_METRICS_PORT": "0"}
        containers.start(images["worker"], worker_env, volumes=(f"{readable_model}:/models/chronoedit:ro",))
        job = _submit_and_wait(f"http://127.0.0.1:{port}", receiver, containers)
        assert job["status"] == "succeeded", containers.logs()
        assert job["ran_with"]["device"] == "cpu" and job["outputs"]["image"]["content_type"] == "image/png"
        [delivery] = receiver.wait_for("/hook", 1, timeout=60)  # the receiver must still listen
        assert json.loads(delivery.body)["type"] == "edit.succeeded"
    finally:
        server.shutdown()


def _submit_and_wait(base: str, receiver: Receiver, containers: Containers, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=30) as client:
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the stack never became ready:\n{containers.logs()}"
            time.sleep(1)
        submitted = client.post(
            "/v1/edits",
            files={"image": ("p.png", sample_image(48, 32), "image/png")},
            data={
                "prompt": "make it red",
                "num_inference_steps": "2",
                "width": "32",
                "height": "32",
                "webhook": f"{receiver.base_url}/hook",
            },
        )
        assert submitted.status_code == 202, submitted.text
        while True:
            job = client.get(f"/v1/edits/{submitted.json()['id']}").json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                return dict(job)
            assert time.monotonic() < deadline, f"job still {job['status']}:\n{containers.logs()}"
            time.sleep(0.5)
