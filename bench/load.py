"""Load benchmark: the API's submit and poll latency at stated rates, and thousands of tiny jobs over several worker
processes with none lost and none run twice.

Everything runs on loopback and stops by itself: a Redis, local storage, the API (one uvicorn process, keys on) and
`--workers` worker processes serving the tiny random model (each job is one denoising step at 16x16, so the run
measures the service, not the model).

1. Latency, the API alone on the machine (the workers start after it, as in a deployment where they have hosts of
   their own): at each of `--rates` submits per second, with `--poll-ratio` times as many polls of earlier jobs, for
   `--seconds`, on a fixed schedule (open loop: a slow answer does not delay the next request, and each latency counts
   from when the request was due, so a saturated API shows up as growing latency instead of hiding). p50, p99 and
   max per rate and request kind; the rates stop rising once p99 passes `--saturated-ms`.
2. Throughput: the workers start; `--jobs` more jobs are submitted as fast as `--concurrency` connections allow by
   `--tenants` tenants; all of them and those of step 1 run.
3. Accounting, from the job records: every job `succeeded`, claimed by a worker exactly once (`attempt == 1`), with
   exactly one output file in storage. Lost, failed or duplicated jobs make the exit status 1.

    python bench/load.py --out bench/results/load_2core.json           # the documented figures
    python bench/load.py --workers 3 --jobs 200 --rates 10 --seconds 3  # the run in make test
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from PIL import Image

from service.cli.processes import Child, free_port, python_module, start_redis, wait_http
from service.jobs.record import JobRecord
from service.keys import KeyStore

PREFIX = "load"
TINY_JOB = {"prompt": "make it red", "num_inference_steps": 1, "width": 16, "height": 16, "seed": 0}


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.seconds)
        if not ordered:
            return {"requests": 0}

        def percentile(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 1)

        return {
            "requests": len(ordered),
            "p50_ms": percentile(0.50),
            "p99_ms": percentile(0.99),
            "max_ms": round(ordered[-1] * 1000, 1),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
            "statuses": {str(code): count for code, count in sorted(self.statuses.items())},
        }


class Stack:
    """Redis, the API and the workers as child processes of this script, sharing one data folder."""

    def __init__(self, data: Path, log_level: str | None = None) -> None:
        """Start Redis and the API; `log_level` is every child's (default: CHRONOEDIT_LOG_LEVEL, else WARNING)."""
        from chronoedit_core.tiny import write_tiny_model

        self.data = data
        self.redis_port = free_port()
        self.api_port = free_port()
        model = data / "tiny-model"
        write_tiny_model(model)
        self.env = {
            **os.environ,
            "CHRONOEDIT_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CHRONOEDIT_KEY_PREFIX": PREFIX,
            "CHRONOEDIT_STORAGE_BACKEND": "local",
            "CHRONOEDIT_STORAGE_DIR": str(data / "storage"),
            "CHRONOEDIT_DEV_MODE": "true",
            "CHRONOEDIT_MODEL_DIR": str(model),
            "CHRONOEDIT_PORT": str(self.api_port),
            "CHRONOEDIT_METRICS_PORT": "0",
            "CHRONOEDIT_LOG_FORMAT": "plain",
            "CHRONOEDIT_LOG_LEVEL": log_level or os.environ.get("CHRONOEDIT_LOG_LEVEL", "WARNING"),
        }
        self.children: list[Child] = [start_redis(self.redis_port, data / "redis", log=data / "redis.log")]
        self.redis = redis.Redis(port=self.redis_port)
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        api = Child("api", python_module("service.cli", "api"), self.env, log=data / "api.log")
        self.children.append(api)
        wait_http(f"{self.base_url}/healthz", api)

    def start_workers(self, workers: int) -> None:
        for index in range(workers):
            # One thread each: the workers share the machine's cores, as GPU workers share nothing but the host.
            env = {**self.env, "CHRONOEDIT_WORKER_NAME": f"load-{index}", "OMP_NUM_THREADS": "1"}
            log = self.data / f"w{index}.log"
            self.children.append(Child(f"load-{index}", python_module("service.cli", "worker"), env, log=log))
        self._wait_workers(workers)

    def _wait_workers(self, count: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [child.name for child in self.children if not child.alive()]
            if dead:
                raise RuntimeError(f"{dead} exited; logs in {self.data}")
            registered = [json.loads(v) for v in self.redis.mget(self.redis.keys(f"{PREFIX}:worker:*") or ["-"]) if v]
            if sum(1 for worker in registered if worker.get("ready")) >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{count} workers not ready after {timeout} s; logs in {self.data}")

    def key(self, tenant: str) -> str:
        token, _ = KeyStore(self.redis, PREFIX).create(tenant, "load", 1_000_000, 1_000_000)
        return token

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def tiny_image() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def timed(latencies: Latencies, due: float, request: Any) -> httpx.Response | None:
    """Run one request; its latency counts from when it was due (open loop)."""
    try:
        response = await request
    except httpx.HTTPError:
        latencies.statuses[0] += 1
        return None
    latencies.seconds.append(time.perf_counter() - due)
    latencies.statuses[response.status_code] += 1
    return response


async def latency_at(
    base_url: str, keys: list[str], rate: float, poll_rate: float, seconds: float
) -> tuple[dict[str, Any], list[str]]:
    """Submits at `rate`/s and polls at `poll_rate`/s on a fixed schedule for `seconds`."""
    submits, polls = Latencies(), Latencies()
    submitted: list[tuple[str, str]] = []
    """(job id, the key that submitted it): a job is polled with its own tenant's key."""
    body = {**TINY_JOB, "image_base64": tiny_image()}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

        async def submit(index: int, due: float) -> None:
            key = keys[index % len(keys)]
            response = await timed(submits, due, client.post("/v1/edits", json=body, headers=_bearer(key)))
            if response is not None and response.status_code == 202:
                submitted.append((response.json()["id"], key))

        async def poll(index: int, due: float) -> None:
            if not submitted:
                return
            job_id, key = submitted[index % len(submitted)]
            await timed(polls, due, client.get(f"/v1/edits/{job_id}", headers=_bearer(key)))

        start = time.perf_counter()
        schedule = [(i / rate, submit, i) for i in range(int(rate * seconds))]
        schedule += [(i / poll_rate, poll, i) for i in range(int(poll_rate * seconds))]
        tasks = []
        for offset, action, index in sorted(schedule, key=lambda entry: entry[0]):
            due = start + offset
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(action(index, due)))
        await asyncio.gather(*tasks)
    return {"submit": submits.summary(), "poll": polls.summary()}, [job_id for job_id, _ in submitted]


def latency_phase(
    base_url: str, keys: list[str], rates: list[float], poll_ratio: float, seconds: float, saturated_ms: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """`latency_at` each rate in turn, until the API saturates."""
    results: list[dict[str, Any]] = []
    job_ids: list[str] = []
    for rate in rates:
        latency, submitted = asyncio.run(latency_at(base_url, keys, rate, rate * poll_ratio, seconds))
        results.append({"submits_per_second": rate, "polls_per_second": rate * poll_ratio, **latency})
        job_ids += submitted
        print(json.dumps(results[-1]), flush=True)
        if max(latency["submit"].get("p99_ms", 0), latency["poll"].get("p99_ms", 0)) > saturated_ms:
            break
        time.sleep(1.0)
    return results, job_ids


async def throughput_phase(base_url: str, keys: list[str], jobs: int, concurrency: int) -> tuple[list[str], float]:
    """`jobs` submissions as fast as `concurrency` connections allow; the ids and the seconds it took."""
    body = {**TINY_JOB, "image_base64": tiny_image()}
    job_ids: list[str] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def submit(index: int) -> None:
            async with gate:
                response = await client.post("/v1/edits", json=body, headers=_bearer(keys[index % len(keys)]))
                if response.status_code == 202:
                    job_ids.append(response.json()["id"])
                else:
                    print(f"submit {index}: {response.status_code} {response.text[:200]}", file=sys.stderr)

        start = time.perf_counter()
        await asyncio.gather(*(submit(i) for i in range(jobs)))
    return job_ids, time.perf_counter() - start


def wait_finished(client: redis.Redis, job_ids: list[str], timeout: float) -> tuple[list[JobRecord | None], float]:
    """The records once every job is finished (or at the timeout), and when the last one finished."""
    deadline = time.monotonic() + timeout
    keys = [f"{PREFIX}:job:{job_id}" for job_id in job_ids]
    while True:
        records = [JobRecord.model_validate_json(raw) if raw else None for raw in client.mget(keys)]
        unfinished = sum(1 for record in records if record is None or not record.status.is_terminal())
        if unfinished == 0 or time.monotonic() > deadline:
            return records, max((r.finished_at or 0.0) for r in records if r is not None) if records else 0.0
        time.sleep(1.0)


def account(records: list[JobRecord | None], job_ids: list[str], storage: Path) -> dict[str, Any]:
    """Lost (no record, or never finished), failed, and duplicated (claimed more than once, or more than one set of
    outputs) jobs."""
    statuses = Counter(str(record.status) if record else "missing" for record in records)
    duplicated = [r.id for r in records if r is not None and r.attempt != 1]
    extra_outputs = []
    for job_id in job_ids:
        written = [p for p in (storage / "jobs" / job_id / "attempts").rglob("*") if p.is_file()]
        if len(written) != 1:
            extra_outputs.append((job_id, len(written)))
    lost = sum(1 for r in records if r is None or not r.status.is_terminal())
    run = sorted(r.finished_at - r.started_at for r in records if r is not None and r.finished_at and r.started_at)
    return {
        "worker_seconds_per_job_p50": round(run[len(run) // 2], 3) if run else None,
        "jobs": len(job_ids),
        "statuses": dict(statuses),
        "lost": lost,
        "failed": statuses.get("failed", 0),
        "claimed_more_than_once": len(duplicated),
        "output_sets_not_one": len(extra_outputs),
        "examples": {"claimed_more_than_once": duplicated[:5], "output_sets_not_one": extra_outputs[:5]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4, help="worker processes (each serves one job at a time)")
    parser.add_argument("--tenants", type=int, default=4, help="API keys, one tenant each")
    parser.add_argument("--rates", default="5,10,20,40,80", help="submits per second in the latency phase, in turn")
    parser.add_argument("--poll-ratio", type=float, default=4, help="polls per submit in the latency phase")
    parser.add_argument("--seconds", type=float, default=15, help="length of the latency phase at each rate")
    parser.add_argument("--saturated-ms", type=float, default=5000, help="stop raising the rate past this p99")
    parser.add_argument("--jobs", type=int, default=3000, help="jobs of the throughput phase")
    parser.add_argument("--concurrency", type=int, default=16, help="connections submitting in the throughput phase")
    parser.add_argument("--timeout", type=float, default=1800, help="give up waiting for the jobs after this")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the data folder (logs) after the run")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the children are stopped on the way out
    data = Path(tempfile.mkdtemp(prefix="chronoedit-load-"))
    stack = Stack(data)
    try:
        keys = [stack.key(f"tenant-{i}") for i in range(args.tenants)]
        rates = [float(rate) for rate in args.rates.split(",")]
        latency, first = latency_phase(stack.base_url, keys, rates, args.poll_ratio, args.seconds, args.saturated_ms)
        stack.start_workers(args.workers)
        started = time.time()
        more, submit_seconds = asyncio.run(throughput_phase(stack.base_url, keys, args.jobs, args.concurrency))
        job_ids = first + more
        records, last_finished = wait_finished(stack.redis, job_ids, args.timeout)
        accounting = account(records, job_ids, data / "storage")
        throughput = {
            "jobs": len(more),
            "submit_seconds": round(submit_seconds, 2),
            "submits_per_second": round(len(more) / submit_seconds, 1) if submit_seconds else None,
            "jobs_per_second": round(len(more) / (last_finished - started), 2) if last_finished > started else None,
        }
        dead = [child.name for child in stack.children if not child.alive()]
    finally:
        stack.stop()
    results = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")} | {"cpus": os.cpu_count()},
        "latency": latency,
        "throughput": throughput,
        "accounting": accounting,
        "processes_died": dead,
    }
    print(json.dumps(results, indent=2, default=str))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    else:
        print(f"data and logs kept in {data}", file=sys.stderr)
    bad = accounting["lost"] + accounting["failed"] + accounting["claimed_more_than_once"]
    return 1 if bad or accounting["output_sets_not_one"] or dead or len(job_ids) < args.jobs else 0


if __name__ == "__main__":
    sys.exit(main())
