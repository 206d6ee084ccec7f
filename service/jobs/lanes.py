"""The batch lane: catalog items wait here, shared fairly between tenants, behind interactive edits.

Interactive jobs are published to their Celery queue by id. Batch items are not: each one publishes a *token* to the
`batch` queue (a message without a job id), and the worker that receives a token asks this lane which item to run
(`BatchLane.take`). The lane keeps, per tenant, the queued items in creation order, and hands out one item per tenant
in turn, the tenant served longest ago first, so one tenant's 5,000 items never hold back another tenant's 10. A
tenant keeps the tick of its last turn when its items run out, so coming back with one item at a time does not put
it ahead of the others. Tokens are interchangeable (the reconciler keeps one waiting per waiting item): a surplus
token runs the next item early or, on an empty lane, nothing; a lost one is replaced.

Interactive edits go first because of the worker: it consumes its queues in the order listed
(`queue_order_strategy="priority"`), `edits` before `batch`, and takes one message at a time. An item already
running is not interrupted.

Membership is kept with the job record: `events.apply` adds an item when it becomes `queued` and removes it when it
leaves that state, in the same Redis transaction as the change. The one step outside a transaction is `take`, which
moves an item from its tenant's set to `taken` until the worker's claim removes it; the reconciler puts back items
taken longer than a lease ago whose worker died before claiming them.
"""

from __future__ import annotations

from typing import Any, cast

import redis

from service.jobs.record import JobRecord

TAKE = """
local turns, tick, taken, served = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for _, tenant in ipairs(redis.call('ZRANGE', turns, 0, -1)) do
  local pending = ARGV[1] .. tenant
  local head = redis.call('ZPOPMIN', pending)
  if head[1] then
    local now = redis.call('INCR', tick)
    redis.call('HSET', served, tenant, now)
    if redis.call('ZCARD', pending) == 0 then
      redis.call('ZREM', turns, tenant)
    else
      redis.call('ZADD', turns, now, tenant)
    end
    redis.call('ZADD', taken, ARGV[2], head[1])
    return head[1]
  end
  redis.call('ZREM', turns, tenant)
end
return false
"""
"""Pop the oldest item of the tenant whose turn came longest ago; that tenant goes to the back of the rotation."""

ENTER = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if not redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[3], ARGV[3]) or 0, ARGV[3])
end
"""
"""Queue an item; a tenant coming back to the rotation takes its place by its last turn (0: never served)."""


class LaneKeys:
    """Redis key names of the batch lane."""

    def __init__(self, prefix: str) -> None:
        self.pending_prefix = f"{prefix}:lane:batch:pending:"
        self.turns = f"{prefix}:lane:batch:turns"
        """Tenants with queued items, scored by the tick of their last turn (0: never served, so next)."""
        self.tick = f"{prefix}:lane:batch:tick"
        self.taken = f"{prefix}:lane:batch:taken"
        self.served = f"{prefix}:lane:batch:served"
        """Hash: tenant -> tick of its last turn."""

    def pending(self, tenant: str) -> str:
        return self.pending_prefix + tenant


def enter(pipe: Any, keys: LaneKeys, job: JobRecord) -> None:
    """Queue `job` in its tenant's set (inside the MULTI of the change that made it `queued`). Older items first,
    so a requeued item goes back ahead of later ones."""
    pipe.eval(ENTER, 3, keys.pending(job.tenant), keys.turns, keys.served, job.id, job.created_at, job.tenant)


def leave(pipe: Any, keys: LaneKeys, job: JobRecord) -> None:
    """Take `job` out of the lane (inside the MULTI of the change that made it leave `queued`)."""
    pipe.zrem(keys.pending(job.tenant), job.id)
    pipe.zrem(keys.taken, job.id)


class BatchLane:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = LaneKeys(prefix)
        self._take = client.register_script(TAKE)

    def take(self, now: float) -> str | None:
        """The id of the next item to run, fair between tenants; None when the lane is empty."""
        keys = self.keys
        taken = self._take(keys=[keys.turns, keys.tick, keys.taken, keys.served], args=[keys.pending_prefix, now])
        return cast(bytes, taken).decode() if taken else None

    def stale_taken(self, before: float) -> list[str]:
        """Items taken before `before` and never claimed (their worker died in between)."""
        members = cast(list[bytes], self.client.zrangebyscore(self.keys.taken, "-inf", before, start=0, num=500))
        return [member.decode() for member in members]

    def put_back(self, job: JobRecord) -> None:
        """Return a taken, still queued item to its tenant's set."""
        with self.client.pipeline() as pipe:
            enter(pipe, self.keys, job)
            pipe.zrem(self.keys.taken, job.id)
            pipe.execute()

    def forget_taken(self, job_id: str) -> None:
        self.client.zrem(self.keys.taken, job_id)

    def pending(self, tenant: str | None = None) -> int:
        """Items waiting in the lane: of one tenant, or of all."""
        if tenant is not None:
            return int(cast(int, self.client.zcard(self.keys.pending(tenant))))
        tenants = [t.decode() for t in cast(list[bytes], self.client.zrange(self.keys.turns, 0, -1))]
        with self.client.pipeline(transaction=False) as pipe:
            for name in tenants:
                pipe.zcard(self.keys.pending(name))
            return sum(int(n) for n in pipe.execute())
