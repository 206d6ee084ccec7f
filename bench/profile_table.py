"""The memory-profile measurements as tables: which runs `bench/memory_profiles.py` does, how their JSON files merge,
and the Markdown it makes of them: the README's table (which GPU, which profile, how fast) and a detailed one.

Torch-free, so the results can be turned into the README table anywhere:

    python bench/profile_table.py bench/results/memory_profiles_h100.json                  # print the README table
    python bench/profile_table.py bench/results/memory_profiles_h100.json --readme README.md   # or write it there
    python bench/profile_table.py first.json second.json --merged bench/results/memory_profiles_h100.json

Several files (one per `run` call, e.g. a second call for the runs the first one's time budget skipped) merge run
by run; a later file's run replaces an earlier one of the same label. `--readme` replaces what stands between the
README's two `memory-profiles-table` comment lines.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

CAPS_GIB = {"24": 21.5, "48": 44.0, "80": 78.0}
"""What a card of each class leaves the process: its smallest common card (L4 22.5 GiB, L40S 44.4, H100 79.2) less
the CUDA context, which torch's allocator does not count."""
CARDS = {"24": "24 GB: L4, A10, RTX 4090", "48": "48 GB: L40S, RTX 6000 Ada, A6000", "80": "80 GB: H100, A100 80GB"}

RUNS = [
    ("resident", "80"),  # first: the reference outputs every later run is compared with
    ("fp8-resident", "48"),
    ("offload", "24"),
    ("fp8-offload", "24"),
    ("lean", "48"),
    ("fp8-resident", "24"),  # does the 48 GB profile fit a 24 GB card too? (faster than streaming if it does)
]
"""Each run: one memory profile under one cap, most important first (the time budget drops runs from the end)."""
RUN_WEIGHTS = {"resident@80": 1.0, "fp8-resident@48": 1.0, "offload@24": 1.4, "fp8-offload@24": 1.2}
"""Each run's share of the time budget relative to the others (streaming runs take longer); 0.8 when not listed."""

MARKERS = ("<!-- memory-profiles-table:start -->", "<!-- memory-profiles-table:end -->")


def label(profile: str, cap: str) -> str:
    return f"{profile}@{cap}"


def merge(files: list[Path]) -> dict[str, Any]:
    """Runs from every file by label (later files win), with each file's device and CPU text-encoder figures."""
    merged: dict[str, Any] = {"runs": {}, "text_encoder_cpu": None, "caps_gib": CAPS_GIB, "sources": []}
    for path in files:
        data = json.loads(path.read_text())
        merged["runs"].update(data.get("runs", {}))
        merged["text_encoder_cpu"] = data.get("text_encoder_cpu") or merged["text_encoder_cpu"]
        merged["sources"].append({"file": path.name, "command": data.get("command"), "skipped": data.get("skipped")})
    order = {label(*run): i for i, run in enumerate(RUNS)}
    merged["runs"] = dict(sorted(merged["runs"].items(), key=lambda item: order.get(item[0], len(order))))
    return merged


def device_line(merged: dict[str, Any]) -> str:
    """Where the runs were measured: GPU, torch, host-to-device copy rate."""
    metas = [run.get("meta", {}) for run in merged["runs"].values() if run.get("meta")]
    if not metas:
        return "No run recorded its device."
    meta = metas[0]
    rate = meta.get("h2d_gbs")
    link = f", pinned host-to-device copies at {rate:.0f} GB/s" if rate else ""
    return f"Measured on one {meta.get('gpu', 'CPU (toy sizes)')}, torch {meta.get('torch')}{link}."


def readme_table(merged: dict[str, Any]) -> str:
    """Which GPU, which profile, how fast: the README's table, from the runs that measured a fast edit."""
    base = _resident(merged)
    lines = [
        device_line(merged),
        "",
        "| GPU memory (cards) | profile | `auto` picks it | fast edit, 1280x720 | standard edit, 1280x720 "
        "| output at 1280x720 | peak GPU memory | weights in host memory | largest output that ran |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_card = sorted(merged["runs"].items(), key=lambda item: -float(item[1].get("cap_gib") or 0))
    for name, run in by_card:
        fast, standard = run.get("fast_edit", {}), run.get("standard_edit", {})
        setup = run.get("setup", {})
        cells = [
            f"{CARDS.get(run.get('cap', ''), run.get('cap', '?'))} (capped to {run.get('cap_gib', '?')} GiB)",
            f"`{run.get('profile', name)}`",
            "yes" if setup.get("auto_picks") == run.get("profile") else "no",
            _seconds(fast.get("s"), base.get("fast")) if "s" in fast else _why_not(run, "fast_edit"),
            _seconds(standard.get("s_extrapolated"), base.get("standard"))
            if "s_extrapolated" in standard
            else _why_not(run, "standard_edit"),
            _output(setup, fast),
            _gib(_peak(fast)),
            _gib(setup.get("host_weights_gib")),
            _largest(run),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_notes(merged)]
    return "\n".join(lines)


def detail_table(merged: dict[str, Any]) -> str:
    """Everything measured per run, for the results file beside the JSON."""
    lines = [
        device_line(merged),
        "",
        "| run | GPU memory between jobs GiB | streamed per forward GB | setup s (compile warm-up s) | fast edit s "
        "| fast step s | standard step s | fast-edit peak GiB (denoise / decode) | VAE tiled at 1280x720 "
        "| vs resident: equality case; fast edit (latents rel L2, last-frame max px) "
        "| prompt encoding s (new / cached) | admitted area Mpx (5 / 29 frames) | probes | 29 frames, 1 step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in merged["runs"].items():
        setup, fast = run.get("setup", {}), run.get("fast_edit", {})
        prompt = run.get("prompt_encoding", {})
        cells = [
            name,
            _num(setup.get("gpu_allocated_idle_gib")),
            _num(setup.get("streamed_gb_per_forward")),
            f"{_num(setup.get('build_s', 0) + setup.get('apply_profile_s', 0))} "
            f"({_num(run.get('warmup', {}).get('wall_s'))})",
            _num(fast.get("s"), 2) if "s" in fast else _why_not(run, "fast_edit"),
            _num(fast.get("step_s"), 3),
            _num(run.get("standard_edit", {}).get("step_s"), 3),
            f"{_num(fast.get('denoise', {}).get('peak_reserved_gib'))} / "
            f"{_num(fast.get('decode', {}).get('peak_reserved_gib'))}",
            ", ".join(fast.get("vae_tiling", [])) or ("no" if "s" in fast else "-"),
            f"{_deviation(run.get('equality', {}))}; {_deviation(fast)}",
            f"{_num(prompt.get('miss_s'), 2)} / {_num(prompt.get('hit_s'), 3)}",
            _areas(setup.get("max_area", {})),
            "; ".join(_probe(p) for p in run.get("probes", [])) or "-",
            _probe(run["reasoning_probe"]) if "reasoning_probe" in run else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    problems = [
        f"- `{name}`: {step}: {text}"
        for name, run in merged["runs"].items()
        for kind in ("errors", "skipped")
        for step, text in run.get(kind, {}).items()
    ]
    return "\n".join(
        [*lines, "", *_notes(merged), *(["", "Errors and skipped measurements:", *problems] * bool(problems))]
    )


def _notes(merged: dict[str, Any]) -> list[str]:
    runs = merged["runs"]
    steps = next((r["standard_edit"].get("extrapolated_from_steps") for r in runs.values() if "standard_edit" in r), 4)
    notes = [
        "Random weights at the real 14B shapes (timing and memory do not depend on the values), each run in its own "
        "process with torch's allocator capped to what a card of the class leaves "
        "(`torch.cuda.set_per_process_memory_fraction`). The cap emulates the memory only: a smaller card also "
        "computes slower and may stream weights over a slower host link.",
        "Fast edit: 8 steps, guidance 1, end to end, the prompt's embeddings cached (a repeated prompt). Standard "
        f"edit: 50 steps, guidance 5, timed over its first {steps} steps and extrapolated to 50, decoding included. "
        "In brackets: how many times `resident`'s time.",
        "Peak GPU memory: the most torch's allocator held (reserved) during the fast edit. Largest output that ran: "
        "one denoising step and the decoding at growing sizes; `*` marks a size the admission refuses that ran when "
        "forced past it (the admission's margin).",
    ]
    eager = [name for name, run in runs.items() if run.get("setup", {}).get("compile") is False]
    compiled = "regional `torch.compile` as workers run it" + (f", except {', '.join(eager)} (eager)" if eager else "")
    notes.append(f"Transformer blocks: {compiled}.")
    cpu = merged.get("text_encoder_cpu")
    if cpu and "s_24_layers_extrapolated" in cpu:
        notes.append(
            f"The text encoder on the host CPU instead of streamed in ({cpu.get('threads')} threads, bf16, 512 "
            f"tokens): about {cpu['s_24_layers_extrapolated']:.1f} s per new prompt (timed over "
            f"{cpu.get('layers_timed')} of its 24 layers)."
        )
    return [f"- {note}" for note in notes]


def _resident(merged: dict[str, Any]) -> dict[str, float | None]:
    run = merged["runs"].get(label("resident", "80"), {})
    return {
        "fast": run.get("fast_edit", {}).get("s"),
        "standard": run.get("standard_edit", {}).get("s_extrapolated"),
    }


def _peak(entry: dict[str, Any]) -> float | None:
    peaks = [entry.get(stage, {}).get("peak_reserved_gib") for stage in ("denoise", "decode")]
    known = [p for p in peaks if p is not None]
    return max(known) if known else None


def _largest(run: dict[str, Any]) -> str:
    """The largest probed size that ran (forced past the admission's refusal: `*`)."""
    ran = [p for p in run.get("probes", []) if p.get("ran")]
    if not ran:
        return (
            "-" if "probes" not in run else "none of " + ", ".join("x".join(map(str, p["size"])) for p in run["probes"])
        )
    best = max(ran, key=lambda p: p["size"][0] * p["size"][1])
    return "x".join(map(str, best["size"])) + ("*" if "refused" in best else "")


def _probe(entry: dict[str, Any]) -> str:
    size = "x".join(map(str, entry.get("size", []))) + f"x{entry.get('frames', 5)}f"
    verdict = "refused" if "refused" in entry else "admitted"
    if entry.get("ran"):
        tiled = ",".join(entry.get("vae_tiling", [])) or "untiled"
        return f"{size} {verdict}, ran ({tiled}, peak {_num(_peak(entry))} GiB, {_num(entry.get('s'))} s)"
    outcome = "out of memory" if "out_of_memory" in entry else entry.get("error", "not run")
    return f"{size} {verdict}, {outcome}"


def _output(setup: dict[str, Any], fast: dict[str, Any]) -> str:
    """What the profile does to the pixels of a 1280x720 edit: nothing (exact), FP8, and the VAE stages tiled."""
    if "exact" not in setup:
        return "-"
    numerics = "exact" if setup["exact"] else "FP8 weights"
    tiled = fast.get("vae_tiling", [])
    return numerics + (f", VAE {' and '.join(tiled)} tiled" if tiled else "")


def _why_not(run: dict[str, Any], step: str) -> str:
    entry = run.get(step, {})
    if "refused" in entry:
        return "refused"
    if "out_of_memory" in entry:
        return "out of memory"
    if step in run.get("errors", {}):
        return "failed"
    return "not measured"


def _deviation(entry: dict[str, Any]) -> str:
    dev = entry.get("vs_resident")
    if not dev:
        return "-"
    return f"{dev['latents_rel_l2']:.2g}, {dev['last_frame_max_abs_px']}"


def _areas(areas: dict[str, int | None]) -> str:
    values = [areas.get(frames) for frames in ("5", "29")]
    return " / ".join("-" if area is None else f"{area / 1e6:.2f}" for area in values)


def _seconds(seconds: float | None, base: float | None) -> str:
    """Seconds, and how many times `resident`'s."""
    if seconds is None:
        return "-"
    if not base or seconds == base:
        return f"{seconds:.1f} s"
    return f"{seconds:.1f} s ({seconds / base:.2f}x)"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GiB"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_readme(readme: Path, table: str) -> None:
    """Put `table` between the README's two marker lines (kept), replacing what stood there."""
    text = readme.read_text()
    start, end = (re.escape(m) for m in MARKERS)
    pattern = re.compile(f"{start}\n.*?{end}", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{readme} lacks the lines {MARKERS[0]} and {MARKERS[1]}")
    readme.write_text(pattern.sub(lambda _: f"{MARKERS[0]}\n{table}\n{MARKERS[1]}", text, count=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="memory_profiles_<gpu>.json files")
    parser.add_argument("--readme", type=Path, help="write the table into this README instead of printing it")
    parser.add_argument("--merged", type=Path, help="also write the merged runs here (JSON, and .md beside it)")
    args = parser.parse_args()
    merged = merge(args.results)
    if args.merged:
        args.merged.write_text(json.dumps(merged, indent=1))
        args.merged.with_suffix(".md").write_text(detail_table(merged) + "\n")
    table = readme_table(merged)
    if args.readme:
        write_readme(args.readme, table)
    else:
        print(table)


if __name__ == "__main__":
    main()
