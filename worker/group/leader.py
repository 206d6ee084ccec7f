"""Rank 0 of a worker group: the single-GPU worker's job handling (`WorkerRuntime`: claim, lease heartbeat, stages,
progress, cancel, size admission, upload, finalise, registry, metrics) with each job's denoising run by every rank
together. Anything that calls `runtime.execute(job_id)` runs that job on the whole group.

Crash-only when the ranks fall out of step: if a collective fails (a rank died, or hung past the collective
timeout), the leader withdraws from the registry and exits at once, without touching the job. torchrun then stops
the other ranks and exits non-zero; the job's lease expires, the reconciler re-enqueues it and the next worker runs
it as a new attempt (bounded by `CHRONOEDIT_MAX_ATTEMPTS`), exactly as after a killed single-GPU worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, NoReturn

import torch
from PIL import Image

from chronoedit_core.runner import EditRequest, EditRunner, EditStopped, StepCallback
from worker.group.channel import LeaderChannel, RankStatus, Work
from worker.group.member import GroupMember, RefusedByGroup, rank_status
from worker.model import runner_options
from worker.runtime import WorkerRuntime
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

EXIT_GROUP_BROKEN = 3


class LeaderSteps:
    """The leader's step callback: its own decision (progress recorded, no cancel asked for), told to every rank.

    `released` becomes True once the other ranks were told to stop; from then on an error here concerns this rank
    alone (the group is still in step)."""

    def __init__(self, channel: LeaderChannel, decide: StepCallback | None) -> None:
        self.channel, self.decide = channel, decide
        self.released = False

    def __call__(self, step: int, total: int) -> bool:
        try:
            go = self.decide is None or self.decide(step, total) is not False
        except BaseException:
            self._tell(False)
            raise
        self._tell(go)
        return go

    def _tell(self, go: bool) -> None:
        self.channel.decide(go)
        self.released = not go


class GroupLeaderRuntime(WorkerRuntime):
    def __init__(self, settings: WorkerSettings, member: GroupMember) -> None:
        super().__init__(settings)
        self.member = member
        self.channel = LeaderChannel(member.groups.control, self.rank_status, settings.heartbeat_seconds, self.abandon)

    def _make_runner(self, pipe: Any) -> EditRunner:
        assert self.loras is not None
        runner = self.member.attach(pipe, self.loras, runner_options(self.settings, self.placement))
        self.channel.start_ticks()  # every rank has loaded and now waits for work
        return runner

    def denoise(
        self, request: EditRequest, loras: Sequence[str], image: Image.Image, on_step: StepCallback | None = None
    ) -> torch.Tensor:
        """Every rank denoises `request` together; rank 0's `on_step` decides, after each step, for all of them."""
        steps = LeaderSteps(self.channel, on_step)
        with self.channel.lockstep():
            try:
                work = Work(request, tuple(loras), image)
                self.channel.send(work)
                return self.member.run(work, self.channel, steps)
            except (EditStopped, RefusedByGroup):
                raise  # every rank stopped at the same step, or refused together: still in step
            except Exception as exc:
                if steps.released:
                    raise
                self.abandon(exc)

    def abandon(self, error: BaseException) -> NoReturn:
        """The ranks are out of step: leave the job to its lease and the reconciler, and exit now."""
        logger.critical("worker group broken (%s: %s); exiting", error.__class__.__name__, error, exc_info=error)
        try:
            self.registry.withdraw(self.settings.worker_name)
        finally:
            logging.shutdown()
            os._exit(EXIT_GROUP_BROKEN)

    def stop(self) -> None:
        self.channel.close()
        super().stop()

    def rank_status(self) -> RankStatus:
        return rank_status(self.member.rank, self.placement.device, self.settings, self.metrics_port)

    def info(self) -> dict[str, Any]:
        ranks: list[RankStatus] = [self.rank_status(), *self.channel.statuses]
        return {
            **super().info(),
            "gpus": self.member.layout.ranks,
            "layout": self.member.layout.as_dict(),
            "ranks": ranks,
        }
