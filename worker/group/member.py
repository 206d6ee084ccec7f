"""What every rank of a worker group holds and does: its own copy of the pipeline on its own GPU, the runner the
layout applies to, and running one `Work` item together with the other ranks.

Before any GPU work the ranks agree on whether to run it: each checks the job on its own GPU (adapters, size
admission, the layout's limits) and all of them learn every rank's verdict, so a job one rank refuses fails on the
leader with that rank's code, and no rank is left waiting in a collective the others never enter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from chronoedit_core.errors import ChronoEditError, ModelLoadError
from chronoedit_core.loading import Placement
from chronoedit_core.loras import LoraSet
from chronoedit_core.parallel import ParallelLayout, guidance_executor, make_mesh, split_sequence
from chronoedit_core.runner import EditRunner, RunnerOptions, StepCallback
from worker.group.channel import FollowerChannel, LeaderChannel, RankStatus, Work
from worker.metrics import gpu_memory_info, scrape_target
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

Channel = LeaderChannel | FollowerChannel


class RefusedByGroup(ChronoEditError):
    """A rank refused the job before any GPU work; raised on every rank, with that rank's code and message."""


@dataclass
class ProcessGroups:
    """The groups every rank creates at start, in the same order."""

    mesh: DeviceMesh
    """`("guidance", "ring", "ulysses")` over the GPU backend (NCCL; gloo on CPU): the model's collectives."""
    control: dist.ProcessGroup
    """gloo, collective timeout: job messages, step decisions, admission."""
    startup: dist.ProcessGroup
    """gloo, model-load timeout: the one barrier after every rank has loaded its pipeline."""

    @classmethod
    def create(cls, layout: ParallelLayout, placement: Placement, timeout: float, load_timeout: float) -> ProcessGroups:
        device_type = "cuda" if placement.device.startswith("cuda") else "cpu"
        mesh = make_mesh(layout, device_type)
        control = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout))
        startup = dist.new_group(backend="gloo", timeout=timedelta(seconds=load_timeout))
        return cls(mesh, control, startup)


class GroupMember:
    def __init__(self, rank: int, layout: ParallelLayout, placement: Placement, groups: ProcessGroups) -> None:
        self.rank, self.layout, self.placement, self.groups = rank, layout, placement, groups
        self.runner: EditRunner | None = None
        self.loras: LoraSet | None = None

    def attach(self, pipe: Any, loras: LoraSet, options: RunnerOptions) -> EditRunner:
        """Once every rank has loaded its pipeline: build the runner with the layout's guidance executor, then split
        the sequence (diffusers' hooks then wrap the compiled blocks from outside). The group's ranks keep their
        transformers on their GPUs: a streamed one would be refused by every rank alike, before the barrier."""
        if options.profile.streams_transformer:
            raise ModelLoadError(
                f"memory profile {options.profile.name!r} streams the transformer from host memory; worker groups "
                "run `resident`, `fp8-resident` or `lean` (CHRONOEDIT_MEMORY_PROFILE)"
            )
        dist.barrier(group=self.groups.startup)
        self.runner = EditRunner(pipe, options, guidance=guidance_executor(self.layout, self.groups.mesh))
        split_sequence(pipe.transformer, self.layout, self.groups.mesh)
        self.loras = loras
        logger.info("rank %d ready: layout %s on %s", self.rank, self.layout.as_dict(), self.placement.device)
        return self.runner

    def run(self, work: Work, channel: Channel, on_step: StepCallback) -> torch.Tensor:
        """Run `work` with the other ranks; the final latents (the same on every rank)."""
        assert self.runner is not None, "run() before attach()"
        if self.placement.device.startswith("cuda"):  # each rank's exported `peak` covers the current job
            torch.cuda.reset_peak_memory_stats(self.placement.device)
        self._admit(work, channel)
        return self.runner.denoise(work.request, work.image, on_step=on_step)

    def _admit(self, work: Work, channel: Channel) -> None:
        verdicts = channel.all_gather(self._verdict(work))
        refusal = next((verdict for verdict in verdicts if verdict is not None), None)
        if refusal is not None:
            code, message = refusal
            raise RefusedByGroup(message, code=code)

    def _verdict(self, work: Work) -> tuple[str, str] | None:
        """None if this rank can run `work`, else (code, message)."""
        assert self.runner is not None and self.loras is not None
        try:
            self.loras.activate(work.loras)
            self.runner.check(work.request)
            self.layout.check_request(work.request)
        except ChronoEditError as exc:
            logger.info("rank %d refuses the job: %s %s", self.rank, exc.code, exc.message)
            return exc.code, exc.message
        except Exception as exc:  # every rank must learn of it, or the others would wait for this one in vain
            logger.exception("rank %d cannot run the job", self.rank)
            return "internal_error", f"rank {self.rank}: {exc.__class__.__name__}: {exc}"
        return None


def rank_status(rank: int, device: str, settings: WorkerSettings, metrics_port: int | None) -> RankStatus:
    """What a rank reports for the registry (`GET /v1/models`) and Prometheus discovery."""
    target = scrape_target(settings, metrics_port) if metrics_port else None
    return {"rank": rank, "pid": os.getpid(), "device": device, "metrics_target": target, **gpu_memory_info(device)}
