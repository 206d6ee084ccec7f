"""The client commands (`chronoedit batch ...`, `chronoedit edit`) as a user runs them: separate processes that know
only the API's address, against a running stack with the tiny model."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from service.cli.processes import python_module
from tests.stack import Stack, sample_image

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def served(make_stack) -> Stack:
    stack = make_stack("client")
    stack.start_api()
    stack.start_worker("k1")
    return stack


def chronoedit(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHRONOEDIT_URL": stack.base_url, "COLUMNS": "120"}
    env.pop("CHRONOEDIT_API_KEY", None)
    return subprocess.run(
        python_module("service.cli", *args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def catalog(folder: Path, count: int, start: int = 0) -> Path:
    (folder / "shoes").mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        name = f"shoes/sku-{i}.jpg" if i % 2 else f"sku-{i}.png"
        (folder / name).write_bytes(sample_image(40, 32, seed=i, fmt="JPEG" if i % 2 else "PNG"))
    return folder


UPSCALE = ("--kind", "upscale", "--mode", "fast", "--scale", "2", "--steps", "2")


def test_submit_follow_and_download_a_catalog(served: Stack, tmp_path: Path) -> None:
    folder = catalog(tmp_path / "catalog", 4)
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "copies").mkdir()
    (folder / "copies" / "sku-0.png").write_bytes((folder / "sku-0.png").read_bytes())  # same bytes, other path
    (folder / "sku-2.webp").write_bytes(sample_image(40, 32, seed=9, fmt="WEBP"))  # same stem as sku-2.png
    submitted = chronoedit(served, "batch", "submit", str(folder), *UPSCALE)
    assert submitted.returncode == 1, "an item was refused: the command says so in its exit status"
    assert "refused broken.png: invalid_image" in submitted.stderr
    assert "6 succeeded, 0 failed" in submitted.stderr, submitted.stderr
    batch_id = submitted.stdout.split()[0]
    assert batch_id.startswith("batch_")

    status = chronoedit(served, "batch", "status", batch_id)
    assert status.returncode == 0 and "completed: 6 items" in status.stderr

    out = tmp_path / "out"
    first = chronoedit(served, "batch", "download", batch_id, str(out))
    assert first.returncode == 0 and "6 files written, 0 already there" in first.stderr, first.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == [
        "copies/sku-0.png", "shoes/sku-1.png", "shoes/sku-3.png", "sku-0.png", "sku-2.png.png", "sku-2.webp.png"
    ]  # fmt: skip
    assert Image.open(io.BytesIO((out / "shoes/sku-1.png").read_bytes())).size == (80, 64), "2x the input"
    again = chronoedit(served, "batch", "download", batch_id, str(out))
    assert "0 files written, 6 already there" in again.stderr, "downloads resume"


def test_download_names_stay_inside_the_output_folder() -> None:
    from service.cli.batch import _safe_path, _safe_stem

    for hostile in ("../../etc/cron.d/x.png", "/etc/passwd", "..\\..\\boot.ini", ".."):
        assert not _safe_path(hostile).startswith(("/", "..")) and ".." not in _safe_path(hostile).split("/")
    assert _safe_stem("shoes/sku-1.jpg") == "shoes/sku-1"


def test_a_rerun_uploads_only_what_the_open_batch_lacks(served: Stack, tmp_path: Path) -> None:
    folder = catalog(tmp_path / "growing", 3)
    first = chronoedit(served, "batch", "submit", str(folder), *UPSCALE, "--no-close")
    assert first.returncode == 0, first.stderr
    state = json.loads((folder / ".chronoedit-batch.json").read_text())
    catalog(folder, 2, start=3)
    second = chronoedit(served, "batch", "submit", str(folder), *UPSCALE)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[0] == state["batch_id"] == first.stdout.split()[0]
    assert "5 images, 3 already in the batch" in second.stderr
    assert "batch {} completed: 5 items: 5 succeeded".format(state["batch_id"]) in second.stderr

    again = chronoedit(served, "batch", "submit", str(folder), *UPSCALE)
    assert again.returncode == 0 and again.stdout.split()[0] != state["batch_id"], "a finished batch: a new one"
    assert "(5 reused)" in again.stderr, "same files, seed and weights: no GPU work"


def test_cancel_a_batch(served: Stack, tmp_path: Path) -> None:
    folder = catalog(tmp_path / "to-cancel", 6)
    submitted = chronoedit(served, "batch", "submit", str(folder), "--prompt", "red", "--steps", "30", "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    canceled = chronoedit(served, "batch", "cancel", submitted.stdout.split()[0])
    assert canceled.returncode == 0 and " canceled: 6 items" in canceled.stderr


def test_edit_one_image_with_step_progress(served: Stack, tmp_path: Path) -> None:
    image = tmp_path / "mug.png"
    image.write_bytes(sample_image(48, 32))
    result = chronoedit(
        served, "edit", str(image), "--prompt", "turn the mug red", "--steps", "3", "--width", "32", "--height", "32"
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "mug-edited.png"
    assert Image.open(out).size == (32, 32)
    assert "denoising" in result.stderr or "done" in result.stderr, "the bar follows the job's stages"
    bad = chronoedit(served, "edit", str(image), "--prompt", "x", "--width", "17", "--height", "32")
    assert bad.returncode == 2 and "invalid_size" in bad.stderr
