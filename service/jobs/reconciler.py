"""The reconciler: the job record, not the Celery message, is the source of truth, so a thread in each API process
compares the two and repairs what a lost worker or a lost message left behind. Duplicates are harmless: a worker's
claim drops a message for a job that is running or finished.
"""

from __future__ import annotations

import logging
import threading

from service.jobs.queue import publish
from service.jobs.system import JobSystem

logger = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, jobs: JobSystem) -> None:
        self.jobs = jobs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconcile_once(self) -> int:
        """Re-enqueue running jobs whose lease expired (their worker died) and re-publish queued jobs whose message
        may be lost (a broker restart, a failed publish); returns how many were requeued."""
        requeued = self._republish_stale()
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
            if job is not None and job.status == "queued":
                publish(self.jobs.celery, job)
                count += 1
                logger.warning("job %s: still queued after %.0f s; published again", job_id, after)
            self.jobs.store.mark_published(job_id)
        return count

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
