"""One rank of a layout check, run by `tests/test_parallel.py` under torchrun (gloo, CPU): the tiny pipeline built
from the same seed on every rank, the layout applied the way a worker group applies it, a few edits denoised
together; rank 0 saves the final latents for the test to compare with one process's.

Context parallelism on CPU ranks: diffusers 0.42.1 places each rank on `rank % torch.accelerator.device_count()`,
which divides by zero without an accelerator, and is the only thing that stops it on gloo. Here (and only here) the
count is pinned to 1 so the real Ulysses collectives run on CPU; worker groups refuse the layout on CPU instead.

    python -m torch.distributed.run --standalone --nproc-per-node 4 \\
        -m tests.parallel_ranks '{"guidance": 2, "ulysses": 2}' OUT.pt
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from chronoedit_core.parallel import ParallelLayout, guidance_executor, make_mesh, split_sequence
from chronoedit_core.runner import EditRunner
from chronoedit_core.tiny import build_tiny_pipeline
from tests.parallel_cases import CASES


def main() -> None:
    layout, out = ParallelLayout(**json.loads(sys.argv[1])), sys.argv[2]
    dist.init_process_group("gloo")
    torch.accelerator.device_count = lambda: 1  # see the module docstring
    layout.check(dist.get_world_size())
    mesh = make_mesh(layout, "cpu")
    pipe = build_tiny_pipeline()
    runner = EditRunner(pipe, guidance=guidance_executor(layout, mesh))
    split_sequence(pipe.transformer, layout, mesh)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    latents = {name: runner.denoise(request, image) for name, request in CASES.items()}
    if dist.get_rank() == 0:
        torch.save(latents, out)
    dist.barrier()  # no rank tears its connections down while another still works (PyTorch's shutdown advice)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
