"""The result cache: a job whose output is already known is answered from an earlier job of the same tenant.

A job may be answered from the cache when it asked for it (`cache`, on by default for batch items), its seed was
given explicitly, and the worker knows the digests of the weights it holds (a verified manifest). The key is a hash
of the tenant, the job kind, the input's SHA-256, every resolved parameter (prompt, seed, size, steps, outputs ...),
the weight digests (the base model's and those of the adapters the job activates) and the worker's numerics (device
type, precision, attention backend, compilation, library versions: what changes the pixels besides the weights). It
is computed by the worker that claims the job, so entries made with other weights or numerics are never hit: such a
worker misses, runs the job, and makes its own entries. Entries point at the earlier job's outputs; they live as long
as outputs do (retention), and a hit whose source files are gone is dropped. Tenants never share entries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis

from service.jobs.record import JobRecord, StoredFile


@dataclass(frozen=True)
class CachedResult:
    job_id: str
    outputs: dict[str, StoredFile]


def cache_key(
    job: JobRecord, base_digest: str | None, lora_digests: dict[str, str], numerics: dict[str, str]
) -> str | None:
    """The job's cache key, or None when it may not use the cache."""
    if not job.cache or base_digest is None or job.input.sha256 is None:
        return None
    if any(name not in lora_digests for name in job.params.loras):
        return None
    identity = {
        "tenant": job.tenant,
        "kind": job.kind,
        "input": job.input.sha256,
        "params": job.params.model_dump(mode="json"),
        "weights": {"base": base_digest, "loras": {name: lora_digests[name] for name in sorted(job.params.loras)}},
        "numerics": numerics,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ResultCache:
    def __init__(self, client: redis.Redis, prefix: str, ttl_seconds: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl_seconds

    def _entry(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:cache:{tenant}:{key}"

    def lookup(self, tenant: str, key: str) -> CachedResult | None:
        raw = self.client.get(self._entry(tenant, key))
        if raw is None:
            return None
        entry = json.loads(raw)
        outputs = {name: StoredFile.model_validate(f) for name, f in entry["outputs"].items()}
        return CachedResult(job_id=entry["job_id"], outputs=outputs)

    def remember(self, tenant: str, key: str, job_id: str, outputs: dict[str, StoredFile]) -> None:
        entry = {"job_id": job_id, "outputs": {name: f.model_dump(mode="json") for name, f in outputs.items()}}
        self.client.set(self._entry(tenant, key), json.dumps(entry), ex=self.ttl)

    def forget(self, tenant: str, key: str) -> None:
        self.client.delete(self._entry(tenant, key))
