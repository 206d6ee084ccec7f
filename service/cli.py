"""The `chronoedit` command line: `serve` (the embedded stack), `api`, `worker`, `make-tiny-model`, `openapi`.

Commands import what they need when they run, so `chronoedit api` never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import time
from pathlib import Path

from service.embedded import Child, free_port, python_module, start_redis, wait_http
from service.keys_cli import add_keys_parser, anonymous_env, print_anonymous_notice
from service.logs import configure_logging
from service.settings import ApiSettings

DEMO_PROMPT = "The user wants to turn the mug bright red while keeping the background unchanged."


def cmd_api(_: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app

    settings = ApiSettings()
    configure_logging(settings.log_format, settings.log_level)
    # log_config=None: uvicorn's loggers go through ours; its access log is replaced by service.access's lines.
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0


def cmd_worker(_: argparse.Namespace) -> int:
    from worker.logs import configure_worker_logging
    from worker.settings import WorkerSettings

    # Before the model libraries load and Celery starts, so their warnings are log lines too.
    configure_worker_logging(WorkerSettings())
    from worker.app import app, settings

    argv = [
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        f"--queues={','.join(settings.queues)}",
        f"--hostname={settings.worker_name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]
    app.worker_main(argv)
    return 0


def cmd_metrics_targets(args: argparse.Namespace) -> int:
    """Registered workers' metrics endpoints as Prometheus file_sd targets, on stdout or atomically to a file."""
    import json
    import os

    import redis

    from service.metrics import file_sd_targets
    from service.store import WorkerRegistry

    settings = ApiSettings()
    registry = WorkerRegistry(redis.Redis.from_url(settings.redis_url), settings.key_prefix)
    text = json.dumps(file_sd_targets(registry.workers()), indent=2) + "\n"
    if args.output is None:
        print(text, end="")
        return 0
    partial = Path(f"{args.output}.tmp")
    partial.write_text(text)
    os.replace(partial, args.output)  # Prometheus never reads a half-written file
    return 0


def cmd_webhook_worker(_: argparse.Namespace) -> int:
    from service.webhook_worker import run

    run()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from service.keys_cli import run_keys

    return run_keys(args)


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from chronoedit_core.tiny import write_tiny_model

    path = write_tiny_model(Path(args.directory), seed=args.seed)
    print(f"wrote a tiny random ChronoEdit checkpoint to {path} (its images are noise)")
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from chronoedit_core.manifest import verify_manifest, write_manifest

    folder = Path(args.directory)
    if args.verify:
        print(f"{folder} matches its manifest (digest {verify_manifest(folder).digest})")
        return 0
    print(f"wrote {write_manifest(folder)}")
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from service.app import create_app
    from service.openapi import DOCUMENT_PATH, render

    text = render(create_app(ApiSettings()))
    if args.check:
        same = DOCUMENT_PATH.exists() and DOCUMENT_PATH.read_text() == text
        print("openapi/openapi.json is up to date" if same else "openapi/openapi.json is out of date")
        return 0 if same else 1
    DOCUMENT_PATH.write_text(text)
    print(f"wrote {DOCUMENT_PATH}")
    return 0


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
        "CHRONOEDIT_STORAGE_DIR": str(data / "storage"),
        "CHRONOEDIT_MODEL_DIR": str(model_dir),
        "CHRONOEDIT_QUEUES": '["edits", "reasoning"]',  # the one embedded worker serves every kind
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
        f"Submit an edit:\n\n  {submit}\n\n"
        f"then poll the job (its `outputs.image.url` downloads the PNG):\n\n  curl -s {base}/v1/edits/<id>\n",
        flush=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chronoedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run Redis, local storage, one worker and the API together")
    serve.add_argument("--data-dir", default="var", help="where the embedded stack keeps its files")
    serve.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for a ready worker")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("api", help="run the HTTP API").set_defaults(func=cmd_api)
    sub.add_parser("worker", help="run a GPU worker (Celery)").set_defaults(func=cmd_worker)
    targets = sub.add_parser("metrics-targets", help="print the workers' metrics endpoints as Prometheus file_sd")
    targets.add_argument("--output", help="write to this file (atomically) instead of stdout")
    targets.set_defaults(func=cmd_metrics_targets)
    sub.add_parser("webhook-worker", help="run a webhook delivery worker (Celery, no model)").set_defaults(
        func=cmd_webhook_worker
    )
    add_keys_parser(sub).set_defaults(func=cmd_keys)
    tiny = sub.add_parser("make-tiny-model", help="write a tiny random ChronoEdit checkpoint")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_make_tiny_model)
    manifest = sub.add_parser("manifest", help="write (or --verify) the SHA-256 manifest of a model folder")
    manifest.add_argument("directory")
    manifest.add_argument("--verify", action="store_true", help="check the folder against its manifest instead")
    manifest.set_defaults(func=cmd_manifest)
    spec = sub.add_parser("openapi", help="write openapi/openapi.json from the app")
    spec.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is out of date")
    spec.set_defaults(func=cmd_openapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polling would log every request
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
