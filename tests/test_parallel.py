"""Parallel layouts of the denoising loop on CPU ranks (torchrun, gloo): Ulysses through diffusers' context
parallelism, alone and under a guidance split, against one process's latents for the same seed; and the layout's
rules. (The guidance split alone runs through the real queue in tests/test_worker_group.py.)"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chronoedit_core.parallel import LayoutError, LayoutUnsupported, ParallelLayout, split_sequence
from chronoedit_core.runner import EditRequest, EditRunner
from chronoedit_core.tiny import build_tiny_pipeline
from tests.parallel_cases import BASE, CASES


@pytest.fixture(scope="module")
def one_process() -> dict[str, torch.Tensor]:
    runner = EditRunner(build_tiny_pipeline())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return {name: runner.denoise(request, image) for name, request in CASES.items()}


@pytest.mark.parametrize(
    "layout",
    [{"ulysses": 2}, {"guidance": 2, "ulysses": 2}],
    ids=["ulysses2", "guidance2_x_ulysses2"],
)
def test_layout_denoises_what_one_process_does(
    layout: dict[str, int], one_process: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """Every case (guided, unguided, reasoning frames dropped mid-run) ends with one process's latents: the same
    operations in the same order, so equal to float32 rounding (measured: identical)."""
    ranks = ParallelLayout(**layout).ranks
    out = tmp_path / "latents.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    result = subprocess.run(
        [*command, "-m", "tests.parallel_ranks", json.dumps(layout), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    latents = torch.load(out)
    for name, expected in one_process.items():
        difference = float((latents[name] - expected).abs().max())
        assert difference <= 1e-5 * float(expected.abs().max()), f"{name}: {difference}"


def test_default_layout_splits_guidance_first() -> None:
    assert ParallelLayout.for_ranks(2) == ParallelLayout(guidance=2)
    assert ParallelLayout.for_ranks(4) == ParallelLayout(guidance=2, ulysses=2)
    assert ParallelLayout.for_ranks(3) == ParallelLayout(ulysses=3)
    assert ParallelLayout(guidance=2, ulysses=2).as_dict() == {"guidance": 2, "ulysses": 2, "ring": 1}


@pytest.mark.parametrize(
    ("layout", "ranks", "message"),
    [
        (ParallelLayout(guidance=2), 4, "needs 2 ranks"),
        (ParallelLayout(guidance=4), 4, "guidance is 1 or 2"),
        (ParallelLayout(ulysses=0), 0, "at least 1"),
    ],
)
def test_layout_must_match_the_group(layout: ParallelLayout, ranks: int, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        layout.check(ranks)


def test_sequence_split_refuses_what_it_cannot_split() -> None:
    ulysses = ParallelLayout(ulysses=2)
    with pytest.raises(LayoutUnsupported, match="step caching") as refused:
        ulysses.check_request(dataclasses.replace(BASE, step_cache_threshold=0.1))
    assert refused.value.code == "layout_unsupported"
    ParallelLayout(guidance=2).check_request(dataclasses.replace(BASE, step_cache_threshold=0.1))  # per-rank caches
    # 1264x720: 79x45 cells per latent frame, 2 frames = 7110 tokens, even but not a multiple of 4.
    odd = dataclasses.replace(BASE, width=1264, height=720)
    ulysses.check_request(odd)
    with pytest.raises(LayoutUnsupported, match="7110 video tokens"):
        ParallelLayout(ulysses=4).check_request(odd)
    # While reasoning 8 latent frames (28,440 tokens) split by 4; once the reasoning frames are dropped, 7110 do not.
    reasoning = dataclasses.replace(odd, temporal_reasoning=True, num_inference_steps=4)
    ParallelLayout(ulysses=4).check_request(reasoning)
    with pytest.raises(LayoutUnsupported):
        ParallelLayout(ulysses=4).check_request(dataclasses.replace(reasoning, reasoning_steps=2))


@pytest.mark.skipif(torch.accelerator.device_count() > 0, reason="CPU-only behaviour")
def test_sequence_split_needs_an_accelerator() -> None:
    """On CPU ranks diffusers' context parallelism cannot start (see tests/parallel_ranks.py); the group says so."""
    transformer = build_tiny_pipeline().transformer
    with pytest.raises(LayoutError, match="only on GPUs"):
        split_sequence(transformer, ParallelLayout(ulysses=2), mesh=None)  # type: ignore[arg-type]


def test_runner_checks_a_request_without_running_it() -> None:
    runner = EditRunner(build_tiny_pipeline())
    runner.check(BASE)
    with pytest.raises(ValueError, match="divisible by 16"):
        runner.check(EditRequest(prompt="x", width=65, height=48, seed=0))


def test_layout_setting_names_its_degrees(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from worker.settings import WorkerSettings

    monkeypatch.setenv("CHRONOEDIT_PARALLEL_LAYOUT", '{"guidance": 2, "ulysses": 2}')
    assert ParallelLayout(**(WorkerSettings().parallel_layout or {})) == ParallelLayout(guidance=2, ulysses=2)
    monkeypatch.setenv("CHRONOEDIT_PARALLEL_LAYOUT", '{"guidance": 2, "tensor": 2}')
    with pytest.raises(ValidationError, match="unknown layout degrees"):
        WorkerSettings()
