"""The `chronoedit` command line. Running the service: `serve` (the embedded stack), `api`, `worker`,
`enhancer-worker`, `webhook-worker`, `keys`, `make-tiny-model`, `make-tiny-enhancer`, `manifest`, `metrics-targets`,
`openapi`. Using it over the public HTTP API (`CHRONOEDIT_URL`, `CHRONOEDIT_API_KEY`): `batch ...` and `edit`.

Commands import what they need when they run, so `chronoedit api` never imports torch.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.batch import add_batch_parser, run_batch
from service.cli.edit import add_edit_parser, run_edit
from service.cli.keys import add_keys_parser
from service.cli.serve import cmd_serve
from service.logs import configure_logging
from service.settings import ApiSettings

if TYPE_CHECKING:
    from service.enhance.prompts import PromptEnhancer
    from service.enhance.settings import EnhancerSettings


def cmd_api(_: argparse.Namespace) -> int:
    import uvicorn

    from service.api.app import create_app

    settings = ApiSettings()
    configure_logging(settings.log_format, settings.log_level)
    # log_config=None: uvicorn's loggers go through ours; its access log is replaced by service.access's lines.
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.gpus > 1 or args.replicas:
        from service.cli.multi_gpu import exec_group, run_replicas

        return run_replicas(args.gpus) if args.replicas else exec_group(args.gpus)
    from worker.logs import configure_worker_logging
    from worker.settings import WorkerSettings

    # Before the model libraries load and Celery starts, so their warnings are log lines too.
    configure_worker_logging(WorkerSettings(), model_libraries=False)  # no torch in Celery's main process
    from worker.app import app, settings, worker_argv

    app.worker_main(worker_argv("prefork", settings.queues, settings.worker_name))
    return 0


def cmd_enhancer_worker(_: argparse.Namespace) -> int:
    """The prompt enhancer worker; the local backend (torch, transformers) is imported only when configured."""
    from service.enhance.settings import EnhancerSettings

    settings = EnhancerSettings()
    configure_logging(settings.log_format, settings.log_level, static={"worker": settings.worker_name})
    from service.enhance.worker import run

    if settings.enhancer_backend == "local":
        run(_local_enhancer, in_child=True)
    else:
        from service.enhance.remote import RemoteEnhancer

        run(RemoteEnhancer, in_child=False)
    return 0


def _local_enhancer(settings: EnhancerSettings) -> PromptEnhancer:
    """The local vision-language model, imported in the pool child: torch never loads in Celery's main process, so
    the child forked from it may use CUDA (`worker/app.py`)."""
    from worker.enhancer import LocalEnhancer

    return LocalEnhancer.from_settings(settings)


def cmd_metrics_targets(args: argparse.Namespace) -> int:
    """Registered workers' metrics endpoints as Prometheus file_sd targets, on stdout or atomically to a file."""
    import json
    import os

    import redis

    from service.jobs.registry import WorkerRegistry
    from service.metrics import file_sd_targets

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
    from service.webhooks.worker import run

    run()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from service.cli.keys import run_keys

    return run_keys(args)


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from chronoedit_core.tiny import write_tiny_model

    path = write_tiny_model(Path(args.directory), seed=args.seed)
    print(f"wrote a tiny random ChronoEdit checkpoint to {path} (its images are noise)")
    return 0


def cmd_make_tiny_enhancer(args: argparse.Namespace) -> int:
    from chronoedit_core.tiny_vl import write_tiny_enhancer

    path = write_tiny_enhancer(Path(args.directory), seed=args.seed)
    print(f"wrote a tiny random Qwen2.5-VL prompt enhancer to {path} (its prompts are gibberish)")
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
    from service.api.app import create_app
    from service.api.openapi import DOCUMENT_PATH, render

    text = render(create_app(ApiSettings(dev_mode=True)))  # only renders the document; serves nothing
    if args.check:
        same = DOCUMENT_PATH.exists() and DOCUMENT_PATH.read_text() == text
        print("openapi/openapi.json is up to date" if same else "openapi/openapi.json is out of date")
        return 0 if same else 1
    DOCUMENT_PATH.write_text(text)
    print(f"wrote {DOCUMENT_PATH}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chronoedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run Redis, local storage, one worker and the API together")
    serve.add_argument("--data-dir", default="var", help="where the embedded stack keeps its files")
    serve.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for a ready worker")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("api", help="run the HTTP API").set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="run a GPU worker (Celery), or a worker group over several GPUs")
    worker.add_argument(
        "--gpus", type=int, default=1, help="GPUs to use: above 1, a worker group (torchrun) runs each job on all"
    )
    worker.add_argument(
        "--replicas", action="store_true", help="with --gpus N: N independent single-GPU workers instead of a group"
    )
    worker.set_defaults(func=cmd_worker)
    sub.add_parser(
        "enhancer-worker", help="run a prompt enhancer worker (Celery, `enhance` queue; local model or remote endpoint)"
    ).set_defaults(func=cmd_enhancer_worker)
    targets = sub.add_parser("metrics-targets", help="print the workers' metrics endpoints as Prometheus file_sd")
    targets.add_argument("--output", help="write to this file (atomically) instead of stdout")
    targets.set_defaults(func=cmd_metrics_targets)
    sub.add_parser("webhook-worker", help="run a webhook delivery worker (Celery, no model)").set_defaults(
        func=cmd_webhook_worker
    )
    add_keys_parser(sub).set_defaults(func=cmd_keys)
    add_batch_parser(sub).set_defaults(func=run_batch)
    add_edit_parser(sub).set_defaults(func=run_edit)
    tiny = sub.add_parser("make-tiny-model", help="write a tiny random ChronoEdit checkpoint")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_make_tiny_model)
    tiny_vl = sub.add_parser("make-tiny-enhancer", help="write a tiny random Qwen2.5-VL prompt enhancer")
    tiny_vl.add_argument("directory")
    tiny_vl.add_argument("--seed", type=int, default=0)
    tiny_vl.set_defaults(func=cmd_make_tiny_enhancer)
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
