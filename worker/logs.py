"""The worker's log set-up: the service's JSON (or plain) lines, every line tagged with the worker's name, and the
model libraries' messages folded in (diffusers and transformers otherwise print through handlers of their own)."""

from __future__ import annotations

from service.logs import configure_logging
from worker.settings import WorkerSettings


def configure_worker_logging(settings: WorkerSettings, rank: int | None = None, model_libraries: bool = True) -> None:
    """Configure logging for a worker process; call it before the model libraries are imported to catch their
    import-time warnings too. A worker group's ranks tag their lines with their `rank`. `model_libraries=False` for
    the Celery main process, which must not import torch (`worker/app.py`): its pool child calls
    `route_model_library_logs` itself."""
    static: dict[str, object] = {"worker": settings.worker_name}
    if rank is not None:
        static["rank"] = rank
    configure_logging(settings.log_format, settings.log_level, static=static)
    if model_libraries:
        route_model_library_logs()


def route_model_library_logs() -> None:
    """diffusers' and transformers' messages through the service's log lines instead of their own handlers (this
    imports them, and torch)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
