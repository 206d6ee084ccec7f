"""`chronoedit serve`: the embedded stack. Redis, local storage, one worker, the webhook worker and the API, all
children of this process, serving the tiny random model unless `CHRONOEDIT_MODEL_DIR` names real weights."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from service.cli.keys import anonymous_env, print_anonymous_notice
from service.cli.processes import Child, free_port, python_module, start_redis, wait_http
from service.settings import ApiSettings

DEMO_PROMPT = "The user wants to turn the mug bright red while keeping the background unchanged."


def cmd_serve(args: argparse.Namespace) -> int:
    """Redis + local storage + one worker + the API, all children of this process; Ctrl-C stops everything."""
    data = Path(args.data_dir).resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = ApiSettings()
    model_dir = _model_dir(data)
    redis_port = free_port()
    env = {
        "CHRONOEDIT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CHRONOEDIT_STORAGE_BACKEND": "local",
        "CHRONOEDIT_DEV_MODE": "true",  # the built-in URL-signing secret is fine on a laptop
        "CHRONOEDIT_STORAGE_DIR": str(data / "storage"),
        "CHRONOEDIT_MODEL_DIR": str(model_dir),
        "CHRONOEDIT_QUEUES": '["edits", "reasoning", "batch"]',  # the one embedded worker serves every kind
        "CHRONOEDIT_PORT": str(settings.port),
        **_embedded_observability(settings),
        **anonymous_env(settings, data),
    }
    children: list[Child] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C raises KeyboardInterrupt even where the parent shell started us with SIGINT ignored (a non-interactive
    # shell does that to background commands), which Python would otherwise inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        children.append(start_redis(redis_port, data / "redis", log=logs / "redis.log"))
        children.append(Child("worker", python_module("service.cli", "worker"), env, log=logs / "worker.log"))
        webhooks = python_module("service.cli", "webhook-worker")
        children.append(Child("webhooks", webhooks, env, log=logs / "webhooks.log"))
        children.append(Child("api", python_module("service.cli", "api"), env, log=logs / "api.log"))
        base = f"http://{settings.host}:{settings.port}"
        wait_http(f"{base}/readyz", children[-1], timeout=args.ready_timeout)
        _print_welcome(base, _example_image(data), logs)
        print_anonymous_notice(env)
        while not stopping and all(child.alive() for child in children):
            time.sleep(0.5)
        dead = [child.name for child in children if not child.alive()]
        if dead:
            print(f"stopping: {', '.join(dead)} exited; see {logs}", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping the embedded stack ...", file=sys.stderr)
        for child in reversed(children):
            child.stop()


def _embedded_observability(settings: ApiSettings) -> dict[str, str]:
    """Plain log lines (read by people, in var/logs) and a free worker metrics port (two demos on one machine must
    not clash), unless the environment chose otherwise."""
    from worker.settings import WorkerSettings

    env = {}
    if "log_format" not in settings.model_fields_set:
        env["CHRONOEDIT_LOG_FORMAT"] = "plain"
    if "metrics_port" not in WorkerSettings().model_fields_set:
        env["CHRONOEDIT_METRICS_PORT"] = "0"
    return env


def _model_dir(data: Path) -> Path:
    from worker.settings import WorkerSettings

    configured = WorkerSettings().model_dir
    if configured is not None:
        return configured
    tiny = data / "tiny-model"
    if not (tiny / "chronoedit-manifest.json").exists():  # written last: its presence means the folder is whole
        from chronoedit_core.tiny import write_tiny_model

        print(f"no CHRONOEDIT_MODEL_DIR set: writing the tiny random model to {tiny} (its images are noise)")
        write_tiny_model(tiny)
    return tiny


def _example_image(data: Path) -> Path:
    """A small synthetic product photo (a mug on a plain background) to edit."""
    from PIL import Image, ImageDraw

    path = data / "example.png"
    if not path.exists():
        image = Image.new("RGB", (640, 480), (236, 232, 226))
        draw = ImageDraw.Draw(image)
        draw.rounded_rectangle((230, 140, 410, 380), radius=18, fill=(40, 90, 160))
        draw.ellipse((390, 200, 470, 320), outline=(40, 90, 160), width=18)
        image.save(path)
    return path


def _print_welcome(base: str, image: Path, logs: Path) -> None:
    submit = (
        f"curl -s {base}/v1/edits -F image=@{shlex.quote(str(image))} -F prompt={shlex.quote(DEMO_PROMPT)} "
        "-F num_inference_steps=8 -F width=320 -F height=240"
    )
    print(
        f"\nChronoEdit service ready at {base}  (logs: {logs}; Ctrl-C stops everything)\n\n"
        f"Try it in a browser: {base}/  (the playground)\n\n"
        f"Or submit an edit:\n\n  {submit}\n\n"
        f"then poll the job (its `outputs.image.url` downloads the PNG):\n\n  curl -s {base}/v1/edits/<id>\n",
        flush=True,
    )
