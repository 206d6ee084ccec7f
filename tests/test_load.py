"""The load benchmark, shortened: submits and polls on a fixed schedule against a live API with keys, then a burst of
tiny jobs over three worker processes; every job succeeds, claimed once, with one set of outputs. The full run and
its figures are in the README ("Guarantees"); latencies are reported here, not asserted (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "load.py"


def test_a_burst_of_jobs_over_several_workers_loses_and_repeats_nothing(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    argv = [sys.executable, str(SCRIPT), "--workers", "3", "--jobs", "200", "--rates", "10", "--seconds", "3"]
    argv += ["--poll-ratio", "3", "--timeout", "400", "--out", str(out)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert out.exists(), result.stderr[-4000:]
    report = json.loads(out.read_text())
    accounting = report["accounting"]
    assert accounting["jobs"] == 200 + 30, accounting
    assert accounting["statuses"] == {"succeeded": 230}, accounting
    assert accounting["lost"] == accounting["claimed_more_than_once"] == accounting["output_sets_not_one"] == 0
    assert report["processes_died"] == []
    [at_rate] = report["latency"]
    for kind in ("submit", "poll"):
        latency = at_rate[kind]
        assert latency["requests"] > 0 and 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"], latency
        assert set(latency["statuses"]) == {"202" if kind == "submit" else "200"}, latency
    assert result.returncode == 0, result.stdout[-4000:]
    print(json.dumps({"latency": report["latency"], "throughput": report["throughput"]}))
