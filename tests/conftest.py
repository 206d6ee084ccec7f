from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli.processes import free_port, start_redis
from tests.stack import DEFAULT_WEBHOOK_SECRET, S3_ENV, Stack, start_moto

_databases = itertools.count(0)
REDIS_DATABASES = 64
"""Stacks take 0, 1, 2 ... in turn; tests that use Redis without a stack take 60 to 63."""

_running: list[Stack] = []
"""Every stack built and not yet stopped, oldest first. A stack's processes stop when the scope that built it ends
(the test, or the module for a module fixture's), so a long session does not keep dozens of idle workers polling
Redis on a small machine; the shared stack is not in here: it lives for the session."""


def _stop_stacks_built_since(count: int) -> None:
    while len(_running) > count:
        _running.pop().stop()


@pytest.fixture(scope="module", autouse=True)
def _stop_the_modules_stacks() -> Iterator[None]:
    count = len(_running)
    yield
    _stop_stacks_built_since(count)


@pytest.fixture(autouse=True)
def _stop_the_tests_stacks() -> Iterator[None]:
    count = len(_running)
    yield
    _stop_stacks_built_since(count)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chronoedit_core.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[str]:
    port = free_port()
    child = start_redis(port, tmp_path_factory.mktemp("redis"), log=logs_dir / "redis.log", databases=REDIS_DATABASES)
    yield f"redis://127.0.0.1:{port}"
    child.stop()


@pytest.fixture(scope="session")
def s3_endpoint(logs_dir: Path) -> Iterator[str]:
    child, url = start_moto(logs_dir / "moto.log")
    yield url
    child.stop()


@pytest.fixture(scope="session")
def make_stack(redis_server: str, s3_endpoint: str, tiny_model: Path, logs_dir: Path) -> Iterator:
    """Builds isolated stacks: each gets its own Redis database (hence queues), key prefix and bucket."""

    def make(name: str, **env: str) -> Stack:
        db = next(_databases)
        assert db < 60, "databases 60 to 63 are for the tests that use Redis without a stack"
        stack = Stack(
            name=name,
            logs=logs_dir,
            env={
                **S3_ENV,
                "CHRONOEDIT_REDIS_URL": f"{redis_server}/{db}",
                "CHRONOEDIT_KEY_PREFIX": f"test-{name}",
                "CHRONOEDIT_S3_ENDPOINT_URL": s3_endpoint,
                "CHRONOEDIT_S3_BUCKET": f"bucket-{name}",
                "CHRONOEDIT_MODEL_DIR": str(tiny_model),
                "CHRONOEDIT_DEVICE": "cpu",
                "CHRONOEDIT_QUEUES": '["edits", "reasoning", "batch"]',
                "CHRONOEDIT_HEARTBEAT_SECONDS": "1",
                "CHRONOEDIT_RECONCILE_INTERVAL_SECONDS": "1",
                "CHRONOEDIT_MAX_IMAGE_BYTES": str(2 * 1024 * 1024),
                "CHRONOEDIT_MAX_IMAGE_PIXELS": str(4_000_000),
                "CHRONOEDIT_FETCH_ALLOW_HOSTS": '["127.0.0.1"]',
                "CHRONOEDIT_METRICS_PORT": "0",  # many workers on one machine; each publishes its port
                # The client contract: anonymous loopback mode (keys still honoured), loopback webhook receivers,
                # and a webhook retry schedule of a second instead of a day.
                "CHRONOEDIT_AUTH_REQUIRED": "false",
                "CHRONOEDIT_DEFAULT_WEBHOOK_SECRET": DEFAULT_WEBHOOK_SECRET,
                "CHRONOEDIT_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
                "CHRONOEDIT_WEBHOOK_RETRY_SCHEDULE_SECONDS": "[0.3, 0.3, 0.3]",
                "CHRONOEDIT_WEBHOOK_DISPATCH_INTERVAL_SECONDS": "0.1",
                **env,
            },
        )
        _running.append(stack)
        return stack

    yield make
    for stack in reversed(_running):
        stack.stop()
    _running.clear()


@pytest.fixture(scope="session")
def stack(make_stack) -> Iterator[Stack]:
    """The shared stack: API and one ready worker, for tests that do not kill anything."""
    shared = make_stack("shared")
    _running.remove(shared)  # stopped at the end of the session, not of the test that first asked for it
    shared.start_api()
    shared.start_webhook_worker()
    shared.start_worker("worker-1")
    yield shared
    shared.stop()


@pytest.fixture
def client(stack: Stack):
    with stack.client() as http:
        yield http
