"""`make run`'s machinery: `chronoedit serve` starts Redis, local storage, a worker and the API, prints a curl that
works, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.cli.processes import free_port
from tests.stack import wait_job

pytestmark = pytest.mark.stack


def read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


def test_serve_prints_a_working_curl_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOEDIT_")}
    env["CHRONOEDIT_PORT"] = str(port)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        curl = wait_for_curl(lines, timeout=180)
        assert f"http://127.0.0.1:{port}/v1/edits" in curl
        notice = wait_for_line(lines, "No API keys needed", timeout=10)
        assert "loopback only" in notice, "the keyless mode says so at start"
        submitted = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30, check=True)
        job = httpx.Response(202, content=submitted.stdout).json()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert "ChronoEdit playground" in client.get("/").text, "the playground is served too"
            done = wait_job(client, job["id"], timeout=120)
            assert done["status"] == "succeeded", done
            url = done["outputs"]["image"]["url"]
            png = httpx.get(url)
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
            assert httpx.get(url.replace("signature=", "signature=0")).status_code == 403
        assert (tmp_path / "tiny-model" / "model_index.json").exists()
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        process.wait(timeout=60)
    assert process.returncode == 0
    time.sleep(0.5)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "redis-server stopped"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")


def wait_for_curl(lines: queue.Queue, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if line.strip().startswith("curl -s") and "/v1/edits -F" in line:
            return line.strip()
    raise TimeoutError("no curl printed:\n" + "".join(seen[-40:]))


def wait_for_line(lines: queue.Queue, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if text in line:
            return line
    raise TimeoutError(f"no line with {text!r}")
