"""Everything a client can send, tried as an attacker would: schemathesis generates requests from the committed
OpenAPI document (every operation, then its stateful phase linking operations through their responses) against the
live API with keys required, and checks every answer: no 5xx, every status and body documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.openapi import DOCUMENT_PATH
from tests.chat_server import start_chat_server
from tests.stack import Stack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def guarded(make_stack) -> Iterator[Stack]:
    """Keys required, an edit worker, and a prompt enhancer (remote backend, a chat server on loopback)."""
    chat, chat_server = start_chat_server("fuzz-vl")
    stack = make_stack("hostile", CHRONOEDIT_AUTH_REQUIRED="true", CHRONOEDIT_RATE_LIMIT_PER_MINUTE="100000")
    stack.start_api()
    stack.start_worker("h1")
    remote = {"CHRONOEDIT_ENHANCER_BACKEND": "remote", "CHRONOEDIT_ENHANCER_URL": f"{chat.base_url}/v1"}
    stack.start_enhancer("h-enhancer", env={**remote, "CHRONOEDIT_ENHANCER_MODEL": "fuzz-vl"})
    yield stack
    chat_server.shutdown()


def test_generated_requests_get_documented_answers(guarded: Stack, tmp_path: Path) -> None:
    key = guarded.create_key("fuzzer", "--max-concurrent", "1000")
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        str(DOCUMENT_PATH),
        "--url",
        guarded.base_url,
        "--checks",
        "all",
        "-H",
        f"Authorization: Bearer {key.key}",
        "--max-examples",
        os.environ.get("CHRONOEDIT_FUZZ_EXAMPLES", "20"),
        "--request-timeout",
        "30",
        "--seed",
        "1",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated is not None and int(generated.group(1)) >= 500, result.stdout[-2500:]
    assert "Stateful" in result.stdout and "Scenarios:" in result.stdout, "the stateful phase ran"
