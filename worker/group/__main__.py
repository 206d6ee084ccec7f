"""A worker group: `torchrun --nproc-per-node N -m worker.group`, which `chronoedit worker --gpus N` runs.

Every rank loads the pipeline on its own GPU (`cuda:LOCAL_RANK`; CPU ranks, for tests, talk gloo). Rank 0 alone
consumes Celery tasks (`CHRONOEDIT_GROUP_QUEUES`, the solo pool: tasks run in the process that holds the process
group), talks to Redis and storage, and broadcasts each job; the other ranks follow its messages. Exit status: 0
after a clean stop (rank 0's Celery worker shut down and told the others to stop), non-zero when any rank failed;
torchrun then stops the rest and exits non-zero too.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from chronoedit_core.errors import ModelLoadError
from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.loras import LoraSet
from chronoedit_core.parallel import ParallelLayout
from chronoedit_core.profiles import prefer_expandable_segments
from chronoedit_core.runner import EditStopped
from worker.group.channel import FollowerChannel, Idle, Stop
from worker.group.leader import GroupLeaderRuntime
from worker.group.member import GroupMember, ProcessGroups, RefusedByGroup, rank_status
from worker.logs import configure_worker_logging
from worker.metrics import start_exporter
from worker.model import lora_files, runner_options
from worker.settings import WorkerSettings

logger = logging.getLogger("worker.group")


def main() -> int:
    prefer_expandable_segments()
    settings = WorkerSettings()
    rank, local_rank, ranks = (int(os.environ[name]) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    configure_worker_logging(settings, rank=rank)
    if settings.turbo_transformer is not None:
        logger.error("a worker group runs the base transformer; run turbo workers one per GPU (`--replicas`)")
        return 2
    placement = rank_placement(settings.device, local_rank)
    try:
        layout = ParallelLayout(**(settings.parallel_layout or ParallelLayout.for_ranks(ranks).as_dict()))
        layout.check(ranks)
        start_process_group(placement, settings.collective_timeout_seconds)
        groups = ProcessGroups.create(
            layout, placement, settings.collective_timeout_seconds, settings.proc_alive_timeout_seconds
        )
        member = GroupMember(rank, layout, placement, groups)
        if rank == 0:
            lead(settings, member)
        else:
            follow(settings, member)
    except BaseException:
        logger.exception("rank %d failed; the group stops", rank)
        logging.shutdown()
        os._exit(1)  # no clean-up: a process group with a dead peer can hang in its destructor
    dist.destroy_process_group()
    return 0


def rank_placement(device: str, local_rank: int) -> Placement:
    """Rank N of a host runs on `cuda:N` (all GPUs stay visible to every rank, so NCCL sees NVLink)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Placement.resolve(f"cuda:{local_rank}" if device.startswith("cuda") else device)


def start_process_group(placement: Placement, timeout_seconds: float) -> None:
    timeout = timedelta(seconds=timeout_seconds)
    if placement.device.startswith("cuda"):
        torch.cuda.set_device(placement.device)
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device(placement.device))
    else:
        dist.init_process_group("gloo", timeout=timeout)


def lead(settings: WorkerSettings, member: GroupMember) -> None:
    from worker.app import serve  # the Celery app; rank 0 alone talks to the broker

    update = {"queues": settings.group_queues, "device": member.placement.device}
    runtime = GroupLeaderRuntime(settings.model_copy(update=update), member)
    runtime.start()
    try:
        serve(runtime)
    finally:
        runtime.stop()


def follow(settings: WorkerSettings, member: GroupMember) -> None:
    """Load, then run what rank 0 sends until it says stop. Signals are rank 0's to act on (it finishes the running
    job first); an error here ends this process, and torchrun the group."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    port = start_exporter(rank_settings(settings, member.rank), member.placement.device)
    if settings.model_dir is None:
        raise ModelLoadError("CHRONOEDIT_MODEL_DIR is not set")
    pipe = load_pipeline(settings.model_dir, member.placement)
    member.attach(
        pipe, LoraSet(pipe, lora_files(settings, settings.model_dir)), runner_options(settings, member.placement)
    )
    channel = FollowerChannel(member.groups.control)
    while True:
        message = channel.receive()
        if isinstance(message, Stop):
            return
        if isinstance(message, Idle):
            channel.report(rank_status(member.rank, member.placement.device, settings, port))
            continue
        try:
            member.run(message, channel, lambda step, total: channel.decision())
        except (EditStopped, RefusedByGroup):
            continue  # the leader stopped or refused the job; it reports it
        logger.info("rank %d: edit done (%d steps)", member.rank, message.request.num_inference_steps)


def rank_settings(settings: WorkerSettings, rank: int) -> WorkerSettings:
    """Rank N's exporter listens on `CHRONOEDIT_METRICS_PORT` + N (or a free port when that is 0)."""
    return settings.model_copy(update={"metrics_port": settings.metrics_port + rank if settings.metrics_port else 0})


if __name__ == "__main__":
    sys.exit(main())
