"""The memory-profile measurement's CPU-reachable logic: which runs it starts in which share of its time budget, how
run files merge, the tables made of them and the README block they replace. (`python bench/memory_profiles.py
--tiny` runs the whole script on the CPU at toy sizes.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.memory_profiles import MIN_RUN_S, _compile_error, selected_runs, shares
from bench.profile_table import MARKERS, detail_table, merge, readme_table, write_readme


def run(profile: str, cap: str, cap_gib: float, fast: float | None, **extra: object) -> dict:
    entry: dict = {
        "label": f"{profile}@{cap}",
        "profile": profile,
        "cap": cap,
        "cap_gib": cap_gib,
        "meta": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "h2d_gbs": 52.0},
        "setup": {"compile": True, "exact": "fp8" not in profile, "auto_picks": profile, "host_weights_gib": 43.9},
        **extra,
    }
    if fast is not None:
        peaks = {"peak_reserved_gib": 20.5}
        entry["fast_edit"] = {"s": fast, "ran": True, "denoise": peaks, "decode": peaks, "vae_tiling": ["decode"]}
        entry["standard_edit"] = {"s_extrapolated": fast * 10, "extrapolated_from_steps": 4}
    return entry


def test_runs_are_chosen_by_label_and_share_the_budget_by_weight() -> None:
    assert selected_runs(["offload@24", "resident@80"]) == [("resident", "80"), ("offload", "24")], "in run order"
    with pytest.raises(SystemExit, match="unknown runs"):
        selected_runs(["offload@80"])
    everything = selected_runs(None)
    split = shares(everything, 435)
    assert sum(split) == pytest.approx(435)
    assert min(split) >= MIN_RUN_S, "the default budget starts every run"
    offload, resident = (split[everything.index(r)] for r in (("offload", "24"), ("resident", "80")))
    assert offload > resident, "streaming runs take longer"


def test_compile_errors_are_told_from_others() -> None:
    from torch._dynamo.exc import Unsupported

    try:
        try:
            raise Unsupported("graph break")
        except Unsupported as inner:
            raise RuntimeError("warm-up failed") from inner
    except RuntimeError as outer:
        assert _compile_error(outer)
    assert not _compile_error(ValueError("too large"))


def test_files_merge_run_by_run_and_make_the_readme_table(tmp_path: Path) -> None:
    first = {
        "runs": {
            "resident@80": run("resident", "80", 78.0, 4.0, probes=[{"size": [1600, 896], "ran": True, "refused": ""}]),
            "offload@24": run("offload", "24", 21.5, None, errors={"fast_edit": "RuntimeError()"}),
        },
        "text_encoder_cpu": {"threads": 16, "layers_timed": 2, "s_24_layers_extrapolated": 9.5},
    }
    second = {"runs": {"offload@24": run("offload", "24", 21.5, 10.0)}, "text_encoder_cpu": None}
    paths = [tmp_path / "first.json", tmp_path / "second.json"]
    for path, data in zip(paths, (first, second), strict=True):
        path.write_text(json.dumps(data))
    merged = merge(paths)
    assert list(merged["runs"]) == ["resident@80", "offload@24"]
    assert "fast_edit" in merged["runs"]["offload@24"], "the later file's run replaces the earlier one"
    table = readme_table(merged)
    assert "Measured on one NVIDIA H100 80GB HBM3, torch 2.11.0, pinned host-to-device copies at 52 GB/s." in table
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| 80 GB") and "| 4.0 s |" in rows[0] and "| 1600x896* |" in rows[0]
    assert "| 10.0 s (2.50x) | 100.0 s (2.50x) | exact, VAE decode tiled | 20.5 GiB | 43.9 GiB |" in rows[1]
    assert "about 9.5 s per new prompt" in table, "the CPU text-encoder figure of the first file is kept"
    assert "| offload@24 |" in detail_table(merge(paths[:1])) and "`offload@24`: fast_edit: RuntimeError()" in (
        detail_table(merge(paths[:1]))
    )


def test_the_readme_block_is_replaced_in_place(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{MARKERS[0]}\n{MARKERS[1]}\n\nAfter.\n")
    write_readme(readme, "| a |\n|---|")
    write_readme(readme, "| b |\n|---|")
    assert readme.read_text() == f"# Title\n\n{MARKERS[0]}\n| b |\n|---|\n{MARKERS[1]}\n\nAfter.\n"
    (tmp_path / "other.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="lacks the lines"):
        write_readme(tmp_path / "other.md", "| a |")
