"""`chronoedit edit IMAGE --prompt ...`: one edit over the public API, with a step progress bar fed by the job's
server-sent events, the result written to a file. Exits 1 when the job fails or is canceled."""

from __future__ import annotations

import argparse
import mimetypes
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service.cli.client import ApiClient, ApiFailure

console = Console(stderr=True)


def add_edit_parser(sub: Any) -> argparse.ArgumentParser:
    edit = sub.add_parser("edit", help="edit one image and save the result (public API)")
    edit.add_argument("image", type=Path)
    edit.add_argument("--prompt", required=True, help="the instruction (edit), the object (sketch), extra text")
    edit.add_argument("--kind", choices=["edit", "upscale", "sketch"], default="edit")
    edit.add_argument("--mode", choices=["standard", "fast"], default=None)
    edit.add_argument("--seed", type=int, default=None)
    edit.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    edit.add_argument("--width", type=int, default=None)
    edit.add_argument("--height", type=int, default=None)
    edit.add_argument("--video", action="store_true", help="also save the editing trajectory as MP4")
    edit.add_argument("--out", type=Path, default=None, help="where to write the PNG (default: IMAGE-edited.png)")
    return edit


def run_edit(args: argparse.Namespace) -> int:
    out: Path = args.out or args.image.with_name(f"{args.image.stem}-edited.png")
    with ApiClient() as api:
        try:
            job = _submit(api, args)
            console.print(f"edit {job['id']} {job['status']}")
            job = _follow(api, job)
            if job["status"] != "succeeded":
                error = job.get("error") or {}
                console.print(
                    f"[red]edit {job['id']} {job['status']}[/red] {error.get('code', '')} {error.get('message', '')}"
                )
                return 1
            out.write_bytes(api.download(job["outputs"]["image"]["url"]))
            if "video" in job["outputs"]:
                out.with_suffix(".mp4").write_bytes(api.download(job["outputs"]["video"]["url"]))
        except ApiFailure as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
        except httpx.HTTPError as exc:
            console.print(f"[red]{api.url} could not be reached: {exc}[/red]")
            return 2
    console.print(f"wrote {out} (seed {job['params']['seed']})")
    return 0


def _submit(api: ApiClient, args: argparse.Namespace) -> dict[str, Any]:
    fields = {
        "prompt": args.prompt,
        "kind": args.kind,
        "mode": args.mode,
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "width": args.width,
        "height": args.height,
    }
    data = {name: str(value) for name, value in fields.items() if value is not None}
    if args.video:
        data["outputs"] = '["image", "video"]'
    content_type = mimetypes.guess_type(args.image.name)[0] or "application/octet-stream"
    files = {"image": (args.image.name, args.image.read_bytes(), content_type)}
    return dict(api.json("POST", "/v1/edits", data=data, files=files))


def _follow(api: ApiClient, job: dict[str, Any]) -> dict[str, Any]:
    """The job once finished; the bar shows the stage and the denoising steps as the events come."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("queued", total=job["progress"]["total"])
        for _, update in api.events(job["id"]):
            job = update
            step, stage = job["progress"]["step"], job["progress"]["stage"]
            position = f" (position {job['queue_position']})" if job.get("queue_position") else ""
            progress.update(task, description=f"{stage}{position}", completed=step, total=job["progress"]["total"])
    return job
