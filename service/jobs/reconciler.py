"""The reconciler: the job record, not the Celery message, is the source of truth, so a thread in each API process
compares the two and repairs what a lost worker or a lost message left behind. Duplicates are harmless: a worker's
claim drops a message for a job that is running or finished, and a surplus batch-lane token takes nothing.

Each pass: running jobs whose lease expired are requeued (or fail past the attempt cap); interactive jobs queued
too long, and jobs waiting too long for their prompt enhancement, are published again; jobs whose enhancement is not
done by the enhancement deadline go on by their failure policy; batch items taken from the lane by a worker that
died before claiming them go back; the batch queue gets a token for every item waiting in the lane; and batches
whose last item finished while their finishing process died are completed.
"""

from __future__ import annotations

import logging
import threading
import time

from service.jobs.queue import BATCH_QUEUE, publish, publish_batch_token, queue_lengths
from service.jobs.system import JobSystem

logger = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, jobs: JobSystem) -> None:
        self.jobs = jobs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconcile_once(self) -> int:
        """One pass over everything described above; returns how many interactive jobs were requeued or
        re-published."""
        requeued = self._republish_stale()
        self._enforce_enhancement_deadline()
        self._return_taken()
        self._top_up_tokens()
        self._complete_batches()
        for job_id in self.jobs.store.expired_leases():
            job = self.jobs.store.requeue_if_expired(job_id)
            if job is None:
                continue
            if job.status == "queued":
                publish(self.jobs.celery, job)
                requeued += 1
                logger.warning("job %s: worker lease expired after attempt %d; requeued", job_id, job.attempt)
            else:
                logger.error("job %s: worker lost on every attempt; failed", job_id)
        return requeued

    def _republish_stale(self) -> int:
        count, after = 0, self.jobs.settings.republish_after_seconds
        for job_id in self.jobs.store.stale_queued(after):
            job = self.jobs.store.get(job_id)
            if job is not None and job.status == "queued" and (job.lane == "interactive" or job.awaits_enhancement()):
                publish(self.jobs.celery, job)
                count += 1
                logger.warning("job %s: still queued after %.0f s; published again", job_id, after)
            self.jobs.store.mark_published(job_id)
        return count

    def _enforce_enhancement_deadline(self) -> None:
        """A job still waiting for its prompt enhancement after `ENHANCE_TIMEOUT_SECONDS` (no enhancer running, or
        one too slow) fails or goes on with the user's prompt, by its policy; a late answer is then discarded."""
        limit = self.jobs.settings.enhance_timeout_seconds
        for job_id in self.jobs.store.overdue_enhancements(limit):
            job = self.jobs.store.fail_enhancement(job_id, f"no enhanced prompt within {limit:.0f} s")
            if job is None:
                continue
            logger.warning("job %s: prompt enhancement timed out; %s", job_id, job.status.value)
            if job.status == "queued":
                publish(self.jobs.celery, job)

    def _return_taken(self) -> None:
        for job_id in self.jobs.lane.stale_taken(time.time() - self.jobs.settings.lease_seconds):
            job = self.jobs.store.get(job_id)
            if job is not None and job.status == "queued":
                self.jobs.lane.put_back(job)
                logger.warning("batch item %s was taken but never claimed; back in the lane", job_id)
            else:
                self.jobs.lane.forget_taken(job_id)

    def _top_up_tokens(self) -> None:
        """Every item waiting in the batch lane has a token waiting in the batch queue (lost ones are replaced)."""
        missing = self.jobs.lane.pending() - queue_lengths(self.jobs.redis, [BATCH_QUEUE])[BATCH_QUEUE]
        for _ in range(max(0, missing)):
            publish_batch_token(self.jobs.celery)
        if missing > 0:
            logger.warning("batch lane: %d items had no token; published %d", missing, missing)

    def _complete_batches(self) -> None:
        """Close batches left open and idle (a client that never closed them), then complete finished ones."""
        idle_since = time.time() - self.jobs.settings.batch_open_idle_seconds
        for batch_id in self.jobs.batches.idle_open(idle_since):
            if self.jobs.batches.close(batch_id) is not None:
                logger.warning("batch %s took no items for %.0f s; closed", batch_id, time.time() - idle_since)
        for batch_id in self.jobs.batches.unfinished():
            self.jobs.batches.try_complete(batch_id)

    def start(self, interval_seconds: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.reconcile_once()
                except Exception:  # keep reconciling through Redis hiccups
                    logger.exception("reconciler pass failed")

        self._thread = threading.Thread(target=loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
