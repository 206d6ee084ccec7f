"""Structured logs: one JSON object per line, carrying the ids an operator greps for.

Fields come from three places, later ones winning: the process (`static`, e.g. the worker name), the current context
(`log_context(job_id=..., request_id=..., stage=...)`, kept in a context variable so every line logged inside a
request or a job carries them, threadpool and task code included) and the call's own `extra={...}` (durations).

    {"ts": "2025-11-20T10:04:05.123Z", "level": "info", "logger": "worker.runtime", "message": "stage done",
     "worker": "gpu0", "job_id": "...", "request_id": "...", "stage": "inference", "duration_s": 41.2}
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

LogFormat = Literal["json", "plain"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("chronoedit_log_context", default=_EMPTY)

# Attributes every LogRecord has; anything else on a record came from `extra=` and belongs in the JSON object.
# (uvicorn adds `color_message`, the same text with terminal colours.)
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every log line emitted inside the block (None values are left out)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Add `fields` for the rest of the enclosing `log_context` block, which undoes them when it ends. For ids
    learnt halfway through a block (a job's request id once it is claimed)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def current_context() -> Mapping[str, Any]:
    """The fields `log_context` has set here; e.g. the request id of the request being served."""
    return _context.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; exceptions go into `exc` (newlines escaped, so still one line)."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
            **_context.get(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """Human-readable lines for development; context fields are appended as `key=value`."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}
        fields = {**self.static, **_context.get(), **extra}
        return line + "".join(f" {k}={v}" for k, v in fields.items()) if fields else line


def configure_logging(fmt: LogFormat, level: str = "INFO", static: Mapping[str, Any] | None = None) -> None:
    """Route every logger (uvicorn's and Celery's included) through one stderr handler in format `fmt`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static) if fmt == "json" else PlainFormatter(static))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # library warnings become log lines too, not free text on stderr
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polling would log every request
