"""The control channel of a worker group: rank 0 (the leader) tells the other ranks what to do next, over a gloo
process group whose collectives time out (`CHRONOEDIT_COLLECTIVE_TIMEOUT_SECONDS`).

Messages go out one at a time, in one order, under a lock: `Work` (an edit every rank runs), `Idle` (nothing to do:
report your status; sent every heartbeat while no job runs, so a waiting rank never hits the timeout and a hung rank
is found within one timeout) and `Stop`. During an edit the leader holds the lock (`lockstep`) and tells every rank,
after each step, whether to go on, so all ranks stop at the same step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from PIL import Image

from chronoedit_core.runner import EditRequest

logger = logging.getLogger(__name__)

LEADER = 0
RankStatus = dict[str, Any]
"""What a rank reports about itself: rank, pid, device, metrics target, GPU memory."""


@dataclass(frozen=True)
class Work:
    """One edit for every rank: the request, its active adapters and the prepared input image."""

    request: EditRequest
    loras: tuple[str, ...]
    image: Image.Image


@dataclass(frozen=True)
class Idle:
    """Nothing to do yet; report your status."""


@dataclass(frozen=True)
class Stop:
    """The group shuts down; exit cleanly."""


Message = Work | Idle | Stop


class LeaderChannel:
    """Rank 0's end. `on_broken` is called (and must not return) when a collective outside a job fails: a rank died
    or hangs, and the group can only exit."""

    def __init__(
        self,
        group: dist.ProcessGroup,
        status: Callable[[], RankStatus],
        tick_seconds: float,
        on_broken: Callable[[BaseException], NoReturn],
    ) -> None:
        self.group, self.status, self.tick_seconds, self.on_broken = group, status, tick_seconds, on_broken
        self.statuses: list[RankStatus] = []
        """The other ranks' last reports, refreshed at every idle tick."""
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="group-ticks", daemon=True)

    @contextmanager
    def lockstep(self) -> Iterator[None]:
        """No idle ticks inside: the ranks are busy with the leader's work."""
        with self._lock:
            yield

    def send(self, message: Message) -> None:
        """Broadcast `message` to every rank; call inside `lockstep` (ticks use the lock too)."""
        dist.broadcast_object_list([message], src=LEADER, group=self.group)

    def decide(self, go: bool) -> None:
        """After a step of the current work: go on, or stop here."""
        dist.broadcast(torch.tensor([int(go)]), src=LEADER, group=self.group)

    def all_gather(self, work: Any) -> list[Any]:
        """Every rank's `work` item, the leader's first."""
        items: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(items, work, group=self.group)
        return items

    def start_ticks(self) -> None:
        self.tick()
        self._ticker.start()

    def tick(self) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self.send(Idle())
            reports: list[Any] = [None] * dist.get_world_size(self.group)
            dist.gather_object(self.status(), reports, dst=LEADER, group=self.group)
            self.statuses = reports[1:]

    def close(self) -> None:
        """Tell every rank to exit (a best effort: a dead rank has taken the group down already)."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            try:
                self.send(Stop())
            except Exception:
                logger.warning("could not tell the other ranks to stop", exc_info=True)

    def _tick_loop(self) -> None:
        while not self._stopped.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception as exc:
                self.on_broken(exc)


class FollowerChannel:
    """The end of every other rank."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group

    def receive(self) -> Message:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=LEADER, group=self.group)
        message: Message = box[0]
        return message

    def report(self, status: RankStatus) -> None:
        dist.gather_object(status, None, dst=LEADER, group=self.group)

    def decision(self) -> bool:
        go = torch.zeros(1, dtype=torch.int64)
        dist.broadcast(go, src=LEADER, group=self.group)
        return bool(go.item())

    def all_gather(self, work: Any) -> list[Any]:
        items: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(items, work, group=self.group)
        return items
