"""One worker process's state: the resident pipeline, its registration heartbeat, and running a claimed job.

Life cycle (reported in the worker registry): starting -> loading -> ready, or setup_failed. A job goes: claim (a new
attempt) -> read input -> denoise (progress per step) -> encode -> upload under attempt-scoped keys -> finalise, which
only the current attempt can do. Bad jobs end `failed` with a code; the process carries on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import diffusers
import redis
import torch
from PIL import Image
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from chronoedit_core.encoding import encode_mp4, encode_png
from chronoedit_core.errors import ChronoEditError, ModelLoadError
from chronoedit_core.images import ImageLimits, decode_image
from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.loras import LoraSet
from chronoedit_core.manifest import sha256_file, verify_manifest
from chronoedit_core.presets import CACHED_PROMPTS, TURBO
from chronoedit_core.profiles import MemoryProfile
from chronoedit_core.runner import (
    EditRequest,
    EditResult,
    EditRunner,
    EditStopped,
    StepCallback,
    frames_to_images,
    prepare_image,
)
from chronoedit_core.sizing import Size
from service import __version__ as SERVICE_VERSION
from service.jobs.batches import BatchStore
from service.jobs.cache import ResultCache, cache_key
from service.jobs.lanes import BatchLane
from service.jobs.metrics import init_job_series
from service.jobs.record import (
    EditParams,
    JobRecord,
    RanWith,
    Stage,
    StageSeconds,
    StoredFile,
    attempt_prefix,
    output_key,
)
from service.jobs.registry import WorkerRegistry
from service.jobs.store import JobStore
from service.logs import bind_log_context
from service.storage import ObjectNotFound, StorageError, make_storage
from worker.metrics import (
    StepTimer,
    WorkerMetrics,
    gpu_memory_info,
    job_claimed,
    scrape_target,
    start_exporter,
    timed_stage,
)
from worker.model import lora_files, memory_profile, runner_options
from worker.reuse import OutputReuse
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
"""What Redis raises while it restarts or is out of reach."""
T = TypeVar("T")


EncodedFile = tuple[str, bytes, str, tuple[int, int]]
"""An output ready to upload: file name, bytes, content type, (width, height)."""


@dataclass
class CurrentJob:
    job_id: str
    attempt: int


class JobFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class WorkerRuntime:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.batches = BatchStore(self.redis, settings.key_prefix, settings.output_retention_seconds)
        self.store = JobStore(
            self.redis,
            settings.key_prefix,
            settings.lease_seconds,
            settings.max_attempts,
            on_item_finished=self.batches.try_complete,
        )
        self.lane = BatchLane(self.redis, settings.key_prefix)
        self.registry = WorkerRegistry(self.redis, settings.key_prefix)
        self.storage = make_storage(settings)
        cache = ResultCache(self.redis, settings.key_prefix, settings.output_retention_seconds)
        self.reuse = OutputReuse(cache, self.store, self.storage)
        self.placement = Placement.resolve(settings.device)
        self.profile: MemoryProfile | None = None
        self.capacity: dict[str, int | None] = {}
        """The largest output areas this worker admits (`max_area`, `max_reasoning_area`), measured after warm-up."""
        self.runner: EditRunner | None = None
        self.loras: LoraSet | None = None
        self.base_digest: str | None = None
        self.transformer_digest: str | None = None
        """The few-step transformer's manifest digest on a turbo worker (`CHRONOEDIT_TURBO_TRANSFORMER`)."""
        self.modes = [TURBO] if settings.turbo_transformer is not None else ["standard", "fast"]
        """The job modes this worker's transformer runs."""
        self.lora_digests: dict[str, str] = {}
        self.model_loads = 0
        """How many times this process loaded the base weights: once, whatever the jobs' adapters."""
        self.state = "starting"
        self.error: str | None = None
        self.current: CurrentJob | None = None
        self.finishing: CurrentJob | None = None
        """The job whose outputs the finisher thread is encoding and uploading while the GPU runs the next one."""
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finisher")
        self._finishing: Future[None] | None = None
        self.metrics = WorkerMetrics(settings.worker_name)
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)

    # --- start and registration --------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve metrics, announce, load the pipeline, become ready. Raises if the model cannot be loaded."""
        init_job_series()
        self.metrics_port = start_exporter(self.settings, self.placement.device, ready=lambda: self.state == "ready")
        self._heartbeat.start()
        self._set_state("loading")
        started = time.monotonic()
        try:
            if self.settings.model_dir is None:
                raise ChronoEditError("CHRONOEDIT_MODEL_DIR is not set", code="model_load_failed")
            model_dir = self.settings.model_dir
            verify = self.settings.verify_manifest
            self.base_digest = verify_manifest(model_dir).digest if verify else None
            turbo_dir = self.settings.turbo_dir()
            if turbo_dir is not None and verify:
                self.transformer_digest = verify_manifest(turbo_dir).digest
            # The adapters were trained on the base transformer; a turbo worker's preset uses none.
            adapters = lora_files(self.settings, model_dir) if turbo_dir is None else {}
            self.lora_digests = {name: sha256_file(path) for name, path in adapters.items()}
            self.profile = memory_profile(self.settings, self.placement)
            logger.info("memory profile %s on %s", self.profile.name, self.placement.device)
            pipe = load_pipeline(model_dir, self.placement, self.profile, transformer_dir=turbo_dir)
            self.model_loads += 1
            self.loras = LoraSet(pipe, adapters)
            self.runner = self._make_runner(pipe)
            self._warm_up()
        except Exception as exc:
            self.error = str(exc)
            self._set_state("setup_failed")
            raise
        self.load_seconds = time.monotonic() - started
        self.metrics.model_loaded(self.load_seconds)
        logger.info("worker %s ready in %.1f s", self.settings.worker_name, self.load_seconds)
        self._set_state("ready")

    def _make_runner(self, pipe: Any) -> EditRunner:
        """The runner of this process's pipeline (a worker group's leader builds one that runs with the group)."""
        return EditRunner(pipe, runner_options(self.settings, self.placement))

    def _warm_up(self) -> None:
        """Encode the prompts every worker keeps; with compilation on, pay it now rather than in the first job: one
        step at 1280x720 (or the largest size the memory profile admits below it) compiles the shape-generic graph
        every later size and frame count reuses. A worker with a compiled VAE warms up at the VAE's size instead (its
        graphs are per size). Then measure the largest sizes the profile admits, for `GET /v1/models`."""
        runner = self.runner
        assert runner is not None
        runner.prompts.preload(CACHED_PROMPTS, runner.device)
        if runner.device.type == "cuda":
            torch.cuda.empty_cache()
        wanted = self.settings.vae_size() or Size(1280, 720)
        size = runner.fitting_size(wanted.width, wanted.height)
        if size is None:
            raise ModelLoadError(
                f"memory profile {runner.profile.name!r} leaves no room for an edit on this GPU; pick one that streams "
                "more from host memory (CHRONOEDIT_MEMORY_PROFILE) or give the worker more GPU memory"
            )
        if runner.options.compile or runner.options.compile_vae:
            started = time.monotonic()
            request = EditRequest(prompt="warm-up", width=size.width, height=size.height, seed=0, num_inference_steps=1)
            image = Image.new("RGB", (size.width, size.height))
            for warm in (request, replace(request, fp8=True)) if runner.options.fp8 else (request,):
                runner.decode(self.denoise(warm, [], image), temporal_reasoning=False)
            seconds = time.monotonic() - started
            logger.info("compiled and warmed up in %.1f s at %dx%d", seconds, size.width, size.height)
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
        self.capacity = {"max_area": runner.max_area(5), "max_reasoning_area": runner.max_area(29)}

    def stop(self) -> None:
        self._finisher.shutdown(wait=True)  # the last batch item's outputs before the lease renewal stops
        self._stop.set()
        self.registry.withdraw(self.settings.worker_name)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.settings.worker_name,
            "pid": os.getpid(),
            "state": self.state,
            "ready": self.state == "ready",
            "error": self.error,
            "model_dir": str(self.settings.model_dir),
            "device": self.placement.device,
            "dtype": str(self.placement.dtype).removeprefix("torch."),
            "queues": self.settings.queues,
            "job_id": self.current.job_id if self.current else None,
            "base_digest": self.base_digest,
            "transformer_digest": self.transformer_digest,
            "modes": self.modes,
            "loras": self.lora_digests,
            "memory_profile": self.profile.name if self.profile else None,
            "exact": self.profile.exact if self.profile else None,
            **self.capacity,
            "model_loads": self.model_loads,
            **gpu_memory_info(self.placement.device),
            "metrics_port": self.metrics_port,
            "metrics_target": scrape_target(self.settings, self.metrics_port) if self.metrics_port else None,
        }

    def _set_state(self, state: str) -> None:
        self.state = state
        self._announce()

    def _announce(self) -> None:
        self.metrics.report(self.state, busy=self.current is not None or self.finishing is not None)
        self.registry.announce(self.settings.worker_name, self.info(), ttl_seconds=3 * self.settings.heartbeat_seconds)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            for beat in (self._renew_lease, self._announce):  # the lease first: it matters most
                try:
                    beat()
                except Exception:  # the heartbeat outlives any one failure (Redis, CUDA, metrics)
                    logger.warning("heartbeat failed; retrying", exc_info=True)

    def _renew_lease(self) -> None:
        for job in (self.current, self.finishing):
            if job is not None:
                self.store.renew(job.job_id, job.attempt)

    # --- running a job -----------------------------------------------------------------------------------------

    def execute_next_batch_item(self) -> None:
        """Run the batch lane's next item (fair between tenants); a token that finds the lane empty does nothing. The
        item's encoding and upload run on the finisher thread, so the GPU starts on the next item meanwhile."""
        job_id = self.lane.take(time.time())
        if job_id is None:
            logger.info("batch lane empty; token dropped")
            return
        self.execute(job_id, finish_in_background=True)

    def execute(self, job_id: str, finish_in_background: bool = False) -> None:
        """Run `job_id` if it is ours to run. Never raises for a bad job: the job ends `failed` instead.

        With `finish_in_background` the job's tail after the GPU work (encoding, upload, finalising the record) runs
        on the finisher thread, and this returns once the previous job's tail is done too (one finishing at a time);
        the lease of the finishing job is renewed until it is finalised, so a worker that dies meanwhile leaves the job
        to be run again, as ever."""
        job = self._durably(
            lambda: self.store.claim(job_id, self.settings.worker_name, batch_canceled=self.batches.is_canceled)
        )
        if job is None:
            logger.info("job %s: not claimable (finished, or running elsewhere); message dropped", job_id)
            return
        bind_log_context(job_id=job.id, request_id=job.request_id, attempt=job.attempt)
        job_claimed(job, self.placement.device)
        stages: StageSeconds = {}
        try:
            self.current = CurrentJob(job_id, job.attempt)
            self._announce()
            finish = self._guarded(job, stages, lambda: self._start(job, stages))
            if finish is None:
                return
            if finish_in_background:
                self.wait_finished()  # the previous job's tail overlapped this one's GPU work; one at a time
                self.finishing = self.current
                self._finishing = self._finisher.submit(self._finish_in_background, job, stages, finish)
                self._finishing.add_done_callback(_log_failure)
            else:
                self._guarded(job, stages, finish)
        finally:
            self.current = None
            self._announce()

    def wait_finished(self) -> None:
        """Wait until the job finishing in the background (if any) is finalised."""
        pending, self._finishing = self._finishing, None
        if pending is not None:
            wait([pending])  # a failure was logged when it happened (`_log_failure`)

    def _finish_in_background(self, job: JobRecord, stages: StageSeconds, finish: Callable[[], None]) -> None:
        bind_log_context(job_id=job.id, request_id=job.request_id, attempt=job.attempt)
        try:
            self._guarded(job, stages, finish)
        finally:
            self.finishing = None

    def _guarded(self, job: JobRecord, stages: StageSeconds, step: Callable[[], T]) -> T | None:
        """Run one part of a job; a bad job ends `failed` (or `canceled`) here and None is returned."""
        try:
            return step()
        except EditStopped as exc:
            logger.info("job %s canceled after %d steps", job.id, exc.steps_done)
            steps = exc.steps_done
            self._durably(lambda: self.store.finish_canceled(job.id, job.attempt, steps, stages))
        except JobFailed as exc:
            self._fail(job, exc.code, exc.message, stages)
        except Exception as exc:
            logger.exception("job %s failed unexpectedly", job.id)
            self._fail(job, "internal_error", f"{exc.__class__.__name__}: {exc}", stages)
        return None

    def _start(self, job: JobRecord, stages: StageSeconds) -> Callable[[], None]:
        """Everything of the job up to its outputs' encoding: reuse earlier outputs, or read the input and run the
        model (timing each stage into `stages`). Returns what finishes the job."""
        if job.params.mode not in self.modes:
            raise JobFailed(
                "mode_unavailable", f"worker {self.settings.worker_name} runs modes {self.modes}, not {job.params.mode}"
            )
        key = cache_key(job, self.base_digest, self.lora_digests, self._numerics())
        reused = self.reuse.reuse(job, key) if key is not None else None
        if reused is not None:
            outputs, source = reused
            return lambda: self._succeed(job, stages, outputs, source, key, tiled=[])
        with timed_stage(job, "input_load", stages):
            image = self._read_input(job)
        with timed_stage(job, "inference", stages):
            result = self._denoise(job, image)
        tiled = list(self.runner.tiled) if self.runner is not None else []  # before the next job runs

        def finish() -> None:
            self._stage(job, "uploading")
            with timed_stage(job, "encode", stages):
                files = self._encode(job, result)
            with timed_stage(job, "upload", stages):
                outputs = self._upload(job, files)
            self._succeed(job, stages, outputs, None, key, tiled)

        return finish

    def _succeed(
        self,
        job: JobRecord,
        stages: StageSeconds,
        outputs: dict[str, StoredFile],
        source: str | None,
        key: str | None,
        tiled: list[str],
    ) -> None:
        """Finalise the attempt with its outputs (reused from job `source`, or made here with the VAE stages `tiled`);
        an attempt that lost its claim meanwhile discards what it uploaded."""
        ran_with = self._ran_with(job, tiled)
        if not self._durably(lambda: self.store.succeed(job.id, job.attempt, outputs, ran_with, source, stages)):
            logger.warning("job %s attempt %d lost its claim; discarding its outputs", job.id, job.attempt)
            self.storage.delete_prefix(attempt_prefix(job.id, job.attempt))
            return
        logger.info("job succeeded", extra={"end_to_end_s": round(time.time() - job.created_at, 6)})
        if key is not None and source is None:
            self.reuse.remember(job, key, outputs)

    def _numerics(self) -> dict[str, str]:
        """What, besides the weights and the job's parameters, changes this worker's pixels."""
        options = self.runner.options if self.runner is not None else None
        return {
            "device": torch.device(self.placement.device).type,
            "dtype": str(self.placement.dtype),
            "attention": str(options.attention_backend if options else None),
            "compile": str(options.compile if options else None),
            "compile_vae": str(options.compile_vae if options else None),
            "memory_profile": str(self.profile.name if self.profile else None),
            "transformer": str(self.transformer_digest),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "service": SERVICE_VERSION,
        }

    def _durably(self, write: Callable[[], T]) -> T:
        """A job-record write that a Redis restart must not lose: retried with backoff for up to one lease (after
        that the lease has expired anyway and the job is someone else's to run)."""
        retrying = Retrying(
            retry=retry_if_exception_type(REDIS_DOWN),
            wait=wait_exponential(multiplier=0.2, max=5),
            stop=stop_after_delay(self.settings.lease_seconds),
            before_sleep=lambda state: logger.warning("Redis unreachable; retrying (attempt %d)", state.attempt_number),
            reraise=True,
        )
        return retrying(write)

    def _fail(self, job: JobRecord, code: str, message: str, stages: StageSeconds) -> None:
        logger.info("job %s attempt %d failed: %s %s", job.id, job.attempt, code, message, extra={"code": code})
        self._durably(lambda: self.store.fail(job.id, job.attempt, code, message, stages))

    def _ran_with(self, job: JobRecord, tiled: list[str]) -> RanWith:
        """The weights and numerics: `dtype` is the transformer's matrix multiplies (FP8 when the job asked for it or
        the memory profile stores FP8 weights); `tiled`: the VAE stages that ran tiled (none for reused outputs)."""
        loras = {name: self.lora_digests[name] for name in job.params.loras}
        fp8 = job.params.fp8 or (self.profile is not None and not self.profile.exact)
        dtype = "float8_e4m3fn" if fp8 else str(self.placement.dtype).removeprefix("torch.")
        profile = self.profile.name if self.profile else None
        return RanWith(
            base_digest=self.base_digest,
            transformer_digest=self.transformer_digest,
            loras=loras,
            device=self.placement.device,
            dtype=dtype,
            memory_profile=profile,
            vae_tiling=tiled,
        )

    def _stage(self, job: JobRecord, stage: Stage) -> None:
        """Record the stage; a cancel asked for in between stops the job here. While Redis is unreachable the stage
        goes unrecorded and the job carries on (as progress does)."""
        try:
            current = self.store.set_stage(job.id, job.attempt, stage)
        except REDIS_DOWN as exc:
            logger.warning("job %s: stage %s not recorded (%s); carrying on", job.id, stage, exc)
            return
        if not current:
            raise EditStopped(self._steps_done(job))

    def _steps_done(self, job: JobRecord) -> int:
        current = self.store.get(job.id)
        return current.progress.step if current else 0

    def _read_input(self, job: JobRecord) -> Any:
        try:
            data = self.storage.get(job.input.key)
        except ObjectNotFound as exc:
            raise JobFailed("input_missing", "the job's input image is no longer in storage") from exc
        except StorageError as exc:
            raise JobFailed("storage_unavailable", f"reading the input failed: {exc}") from exc
        try:
            return decode_image(data, ImageLimits(self.settings.max_image_bytes, self.settings.max_image_pixels)).image
        except ChronoEditError as exc:
            raise JobFailed(exc.code, exc.message) from exc

    def denoise(
        self, request: EditRequest, loras: Sequence[str], image: Image.Image, on_step: StepCallback | None = None
    ) -> torch.Tensor:
        """Denoise one edit with exactly `loras` active; the final latents. A worker group's leader runs this on
        every rank of the group at once."""
        assert self.runner is not None and self.loras is not None, "denoise() before start()"
        self.loras.activate(loras)
        return self.runner.denoise(request, image, on_step=on_step)

    def _denoise(self, job: JobRecord, image: Any) -> EditResult:
        assert self.runner is not None, "execute() before start()"
        p = job.params
        request = edit_request(p)
        step_timer = StepTimer(job)

        def on_step(step: int, total: int) -> bool:
            step_timer(step, total)
            stage: Stage = "decoding" if step == total else "denoising"  # the last step's write starts decoding
            try:
                return self.store.set_progress(job.id, job.attempt, step, total, stage)
            except REDIS_DOWN as exc:  # progress is news, not state: denoising goes on while Redis restarts
                logger.warning("job %s: progress not recorded (%s); carrying on", job.id, exc)
                return True

        try:
            latents = self.denoise(request, p.loras, prepare_image(image, p.width, p.height), on_step=on_step)
            return EditResult(frames=frames_to_images(self.runner.decode(latents, p.temporal_reasoning)))
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise JobFailed("out_of_memory", f"the job did not fit in device memory: {exc}") from exc
        except EditStopped:
            raise
        except ChronoEditError as exc:
            raise JobFailed(exc.code, exc.message) from exc

    def _encode(self, job: JobRecord, result: EditResult) -> dict[str, EncodedFile]:
        """Each requested output, encoded; the image at the input's size when the job asks for it."""
        files: dict[str, EncodedFile] = {}
        if "image" in job.params.outputs:
            image = result.image
            if job.params.output_size == "input":  # back to the catalog's dimensions
                image = image.resize((job.input.width, job.input.height), Image.Resampling.LANCZOS)
            files["image"] = ("image.png", encode_png(image), "image/png", image.size)
        if "video" in job.params.outputs:
            video = encode_mp4(result.frames, fps=job.params.fps)
            files["video"] = ("video.mp4", video, "video/mp4", result.frames[0].size)
        return files

    def _upload(self, job: JobRecord, files: dict[str, EncodedFile]) -> dict[str, StoredFile]:
        stored: dict[str, StoredFile] = {}
        for name, (filename, data, content_type, (width, height)) in files.items():
            key = output_key(job.id, job.attempt, filename)
            try:
                self.storage.put(key, data, content_type)
            except StorageError as exc:
                raise JobFailed("storage_unavailable", f"writing the {name} output failed: {exc}") from exc
            stored[name] = StoredFile(key=key, content_type=content_type, width=width, height=height, bytes=len(data))
        return stored


def edit_request(p: EditParams) -> EditRequest:
    """The runner's request for a job's resolved parameters."""
    return EditRequest(
        prompt=p.model_prompt or p.prompt,
        negative_prompt=p.negative_prompt,
        width=p.width,
        height=p.height,
        seed=p.seed,
        num_inference_steps=p.num_inference_steps,
        guidance_scale=p.guidance_scale,
        flow_shift=p.flow_shift,
        fp8=p.fp8,
        step_cache_threshold=p.step_cache,
        guidance_steps=p.guidance_steps,
        temporal_reasoning=p.temporal_reasoning,
        reasoning_steps=p.reasoning_steps,
    )


def _log_failure(finished: Future[None]) -> None:
    """A job's background tail raised past its own handling (Redis out of reach longer than a lease): say so now;
    its lease expires and the job runs again."""
    if (exc := finished.exception()) is not None:
        logger.error("finishing a job in the background failed; it will run again", exc_info=exc)
