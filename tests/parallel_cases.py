"""The edits the layout checks denoise (tests/parallel_ranks.py, tests/test_parallel.py)."""

from __future__ import annotations

import dataclasses

from chronoedit_core.runner import EditRequest

BASE = EditRequest(prompt="The user wants to make it red.", width=64, height=48, seed=5, num_inference_steps=3)
CASES = {
    "guided": dataclasses.replace(BASE, negative_prompt="blurry", guidance_scale=4.0),
    "unguided": dataclasses.replace(BASE, guidance_scale=1.0, flow_shift=2.0),
    "reasoning_dropped_after_2": dataclasses.replace(BASE, temporal_reasoning=True, reasoning_steps=2),
}
