"""The service-overhead benchmark, shortened: a few sequential jobs per variant on a live stack, each accounted for
(succeeded, its overhead computed from the client's end-to-end time and the record's model time). The full run and
its figures are in the README ("Performance"); speeds are reported here, not asserted (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[1]
JOBS = 4


def test_every_sequential_job_is_accounted_for_with_its_overhead(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    argv = [sys.executable, "-m", "bench.service_overhead", "--jobs", str(JOBS), "--warmup", "1", "--large-jobs", "0"]
    argv += ["--out", str(out)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert out.exists(), result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["processes_died"] == []
    assert set(report["jobs"]) == {"png", "png+mp4"}
    for variant, jobs in report["jobs"].items():
        assert len(jobs) == JOBS and len({job["job_id"] for job in jobs}) == JOBS, variant
        for job in jobs:
            assert job["status"] == "succeeded", job
            assert 0 < job["model_s"] < job["end_to_end_s"], job
            assert job["overhead_s"] == pytest.approx(job["end_to_end_s"] - job["model_s"], abs=1e-5), job
            assert job["model_s"] < job["total_s"] <= job["end_to_end_s"], job
        summary = report["summary"][variant]
        assert summary["succeeded"] == JOBS
        assert 0 < summary["overhead"]["p50"] <= summary["overhead"]["p99"], summary
        assert summary["overhead_percent_of_gpu_fast_edit"]["p50"] > 0, summary
    assert report["gpu_fast_edit"]["entry"] == "results.exact/fast_edit_8step.s"
    assert result.returncode == 0, result.stdout[-4000:]
    print(json.dumps(report["summary"]))
