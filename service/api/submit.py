"""`POST /v1/edits` end to end: read the request, claim the `Idempotency-Key`, resolve the image (body, `image_url`
or `input_key`), check the webhook, build the job, count it against the key's quota, submit it, and honour
`Prefer: wait=N`."""

from __future__ import annotations

import re
from collections.abc import Sequence

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from chronoedit_core.presets import TURBO
from service.api.auth import Principal
from service.api.errors import ApiError
from service.api.idempotency import REPLAY_HEADER, StoredResponse, fingerprint
from service.api.inputs import fetch_image, read_edit_request
from service.api.resolve import build_job
from service.api.schemas import EditCreate
from service.api.services import Services
from service.jobs.events import owner
from service.jobs.record import TERMINAL_EVENTS, JobRecord
from service.jobs.registry import edit_workers
from service.storage import StorageError
from service.webhooks.attempts import WebhookUrlError, check_webhook_url

PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d+)")


def parse_prefer(prefer: str | None, max_wait: int) -> int:
    """Seconds asked for with `Prefer: wait=N` (RFC 7240), capped at `max_wait`; 0 when absent."""
    match = PREFER_WAIT.search(prefer or "")
    return min(int(match.group(1)), max_wait) if match else 0


async def submit_edit(
    request: Request, services: Services, caller: Principal, idempotency_key: str | None, prefer: str | None
) -> JSONResponse:
    edit, data = await read_edit_request(request, services.settings)
    wait = parse_prefer(prefer, services.settings.max_wait_seconds)
    fields = edit.model_dump(mode="json", exclude={"image_base64"})
    print_ = fingerprint("POST /v1/edits", {**fields, "wait": wait}, data or b"")

    async def create() -> StoredResponse:
        job = await _create_job(services, caller, edit, data, request.state.request_id)
        status = 202
        if wait > 0:
            job = await services.watcher.wait_finished(job, wait)
            status = 200 if job.status.is_terminal() else 202
        view = await run_in_threadpool(services.manager.view, job, str(request.base_url))
        headers = {"Location": f"/v1/edits/{job.id}"}
        if wait > 0:
            headers["Preference-Applied"] = f"wait={wait}"
        return StoredResponse(status, view.model_dump(mode="json"), headers)

    stored, replayed = await services.idempotency.run(caller.tenant, idempotency_key, print_, create)
    headers = {**stored.headers, **({REPLAY_HEADER: "true"} if replayed else {})}
    return JSONResponse(stored.body, status_code=stored.status, headers=headers)


async def _create_job(
    services: Services, caller: Principal, edit: EditCreate, data: bytes | None, request_id: str
) -> JobRecord:
    settings = services.settings
    url = str(edit.webhook) if edit.webhook is not None else None
    webhook = await run_in_threadpool(check_webhook, services, caller, url, edit.webhook_events)  # DNS: off the loop
    if data is None and edit.image_url is not None:
        data = await fetch_image(str(edit.image_url), settings)
    elif data is None and edit.input_key is not None:
        data = await run_in_threadpool(services.uploads.read, caller.tenant, edit.input_key)
    assert data is not None, "read_edit_request guarantees one image source"
    job, stored_input = await run_in_threadpool(build_job, edit, data, settings)
    if job.params.mode == TURBO:  # after the request's own checks: a bad request hears about itself first
        await run_in_threadpool(check_mode_served, services, TURBO)
    job = job.model_copy(
        update={
            "tenant": caller.tenant,
            "key_id": caller.key_id,
            "webhook": webhook,
            "webhook_events": list(edit.webhook_events or TERMINAL_EVENTS),
            "request_id": request_id,  # the worker's log lines carry it too
        }
    )
    await run_in_threadpool(services.limits.reserve, caller, owner(job), job.id)
    try:
        await run_in_threadpool(services.jobs.submit, job, stored_input)
    except StorageError as exc:
        await run_in_threadpool(services.limits.release, owner(job), job.id)
        raise ApiError(503, "storage_unavailable", f"storing the input failed: {exc}") from exc
    except BaseException:
        await run_in_threadpool(services.limits.release, owner(job), job.id)
        raise
    return job


def check_mode_served(services: Services, mode: str) -> None:
    """422 when no ready worker serves `mode`: a mode only some workers serve (`turbo`) would otherwise wait in a
    queue nobody reads."""
    workers = edit_workers(services.jobs.registry.workers())
    if not any(
        worker.get("ready") and mode in worker.get("modes", []) and mode in worker.get("queues", [])
        for worker in workers
    ):
        raise ApiError(
            422,
            "mode_unavailable",
            f"no ready worker serves mode `{mode}` (a worker started with CHRONOEDIT_TURBO_TRANSFORMER); use `fast`",
        )


def check_webhook(
    services: Services, caller: Principal, url: str | None, events: Sequence[str] | None = None
) -> str | None:
    """The webhook URL a job or batch may use, or None; 422 when it is forbidden or nothing could sign it."""
    if url is None:
        if events:
            raise ApiError(422, "invalid_parameter", "`webhook_events` needs a `webhook` URL")
        return None
    try:
        check_webhook_url(url, services.settings.webhook_allow_hosts)
    except WebhookUrlError as exc:
        raise ApiError(422, "webhook_url_forbidden", f"webhook {url}: {exc}") from exc
    if caller.key is None and services.settings.default_webhook_secret is None:
        raise ApiError(
            422, "webhook_secret_missing", "webhooks need an API key, or CHRONOEDIT_DEFAULT_WEBHOOK_SECRET without one"
        )
    return url
