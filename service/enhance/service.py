"""The enhancer's work: a job waiting for its prompt enhancement, or a `POST /v1/prompts/enhance` request.

For a job: skip it unless it still waits (it may have been canceled, or given up on by the reconciler); take the
shared answer for the same tenant, instruction and image, or ask the backend; commit the enhanced prompt (and what the
model will see, the kind's template around it) in one transition, which enters the job into the GPU queues; then, and
only then, publish its edit message. A failure goes through the job's policy (`JobStore.fail_enhancement`). The
worker never stops on a bad job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from PIL import Image
from prometheus_client import Counter

from chronoedit_core.errors import ChronoEditError
from chronoedit_core.images import ImageLimits, decode_image
from chronoedit_core.presets import preset
from service.enhance.prompts import EnhanceRequest, EnhancerError, PromptEnhancer, fit_image
from service.enhance.requests import PromptReply, PromptRequests
from service.enhance.settings import EnhancerSettings
from service.enhance.shared import SharedEnhancements
from service.jobs.metrics import observe_stage
from service.jobs.queue import publish
from service.jobs.record import JobRecord, JobStatus
from service.jobs.system import JobSystem
from service.storage import StorageError

logger = logging.getLogger(__name__)

ENHANCEMENTS = Counter(
    "chronoedit_prompt_enhancements",
    "Prompt enhancements by outcome: enhanced (the backend answered), shared (an identical one was reused), failed.",
    ["outcome"],
)
for _outcome in ("enhanced", "shared", "failed"):
    ENHANCEMENTS.labels(_outcome)


class EnhanceService:
    def __init__(self, settings: EnhancerSettings, backend: PromptEnhancer) -> None:
        self.settings = settings
        self.backend = backend
        self.jobs = JobSystem(settings)
        self.shared = SharedEnhancements(self.jobs.redis, settings.key_prefix, settings.output_retention_seconds)
        self.requests = PromptRequests(self.jobs.redis, settings.key_prefix)
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)

    def enhance_job(self, job_id: str) -> JobRecord | None:
        """Enhance the job's prompt and release it to the GPU queues; returns the job as committed, or None."""
        job = self.jobs.store.get(job_id)
        if job is None or not job.awaits_enhancement():
            logger.info("job %s waits for no enhancement; message dropped", job_id)
            return None
        started = time.perf_counter()
        try:
            text, shared = self._enhance(job.tenant, job.kind, job.params.prompt, job.input.sha256 or job.id, job)
        except EnhancerError as exc:
            logger.warning("job %s: prompt enhancement failed: %s", job_id, exc.message)
            new = self.jobs.store.fail_enhancement(job_id, exc.message, self.backend.name)
        else:
            seconds = time.perf_counter() - started
            observe_stage(job, "enhance", seconds)
            logger.info("stage enhance done in %.3f s", seconds, extra={"job_id": job_id, "duration_s": seconds})
            model_prompt = preset(job.kind, job.params.mode).prompt(text)
            new = self.jobs.store.finish_enhancement(job_id, text, model_prompt, self.backend.name, shared)
        if new is not None and new.status == JobStatus.QUEUED:
            publish(self.jobs.celery, new)  # after the commit: whichever GPU worker takes it sees the final prompt
        return new

    def enhance_prompt(self, request_id: str) -> None:
        """Answer a `POST /v1/prompts/enhance` request, if its API still waits."""
        loaded = self.requests.get(request_id)
        if loaded is None:
            logger.info("prompt request %s expired before it was taken", request_id)
            return
        request, data = loaded
        try:
            text, shared = self._enhance(request.tenant, request.kind, request.prompt, request.image_sha256, data)
            reply = PromptReply(enhanced_prompt=text, enhancer=self.backend.name, shared=shared)
        except EnhancerError as exc:
            reply = PromptReply(enhancer=self.backend.name, error=exc.message)
        self.requests.answer(request_id, reply, ttl_seconds=60)

    def _enhance(
        self, tenant: str, kind: str, prompt: str, image_sha256: str, source: JobRecord | bytes
    ) -> tuple[str, bool]:
        """(enhanced prompt, whether it was shared). The image is read only when the backend has to run."""
        key = self.shared.key(tenant, self.backend.name, kind, prompt, image_sha256)
        wait = self.settings.enhance_timeout_seconds
        text = self.shared.get(key)
        if text is None and not self.shared.claim(key, wait):
            text = self.shared.wait(key, wait)  # an identical request is being enhanced: take its answer
        if text is not None:
            ENHANCEMENTS.labels("shared").inc()
            return text, True
        try:
            text = self._run(EnhanceRequest(prompt, kind, self._image(source)))
        finally:
            self.shared.release(key)
        self.shared.put(key, text)
        ENHANCEMENTS.labels("enhanced").inc()
        return text, False

    def _run(self, request: EnhanceRequest) -> str:
        try:
            return self.backend.enhance(request)
        except EnhancerError:
            ENHANCEMENTS.labels("failed").inc()
            raise
        except Exception as exc:  # a backend bug must fail one enhancement, not the worker
            logger.exception("the %s enhancer failed unexpectedly", self.backend.name)
            ENHANCEMENTS.labels("failed").inc()
            raise EnhancerError(f"{exc.__class__.__name__}: {exc}") from exc

    def _image(self, source: JobRecord | bytes) -> Image.Image:
        read: Callable[[], bytes] = (lambda: source) if isinstance(source, bytes) else (lambda: self._input(source))
        try:
            decoded = decode_image(read(), self.limits).image
        except ChronoEditError as exc:
            raise EnhancerError(f"the image cannot be read: {exc.message}") from exc
        return fit_image(decoded, self.settings.enhancer_image_side)

    def _input(self, job: JobRecord) -> bytes:
        try:
            return self.jobs.storage.get(job.input.key)
        except StorageError as exc:  # ObjectNotFound included
            raise EnhancerError(f"reading the job's input failed: {exc}") from exc
