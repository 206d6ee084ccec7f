"""`chronoedit batch submit|status|download|cancel`: catalog batches from a folder of images, over the public API.

`submit DIR` uploads every image of the folder with direct uploads (several at a time), appends them to a batch as
items whose `reference` is a hash of the file's path and bytes and whose metadata holds its path, closes the batch
and follows it to the end with progress bars; it exits 1 with a summary when items failed, were canceled or were
refused. It is resumable: the batch id is kept in `DIR/.chronoedit-batch.json`; a rerun while that batch is open
uploads only the files it lacks, and one while it runs follows it. A batch has a seed (default 0), so rerunning a
finished catalog starts a new batch that reuses every unchanged result (no GPU work).

`download ID OUT_DIR` writes each succeeded item's outputs under its original path (`photo.jpg` -> `photo.png`, and
`photo.mp4` for videos; `photo.jpg.png` when two files would share a name), skipping files already there, so it
resumes too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mimetypes
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service.cli.client import ApiClient, ApiFailure

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
STATE_FILE = ".chronoedit-batch.json"
APPEND_CHUNK = 100
FINISHED = ("succeeded", "failed", "canceled")

console = Console(stderr=True)


@dataclass(frozen=True)
class Source:
    path: Path
    name: str
    """The path below the folder, with `/` separators: the item's `filename` metadata."""
    sha256: str

    @property
    def reference(self) -> str:
        """The item's reference: the same file at the same path is the same item; a copy elsewhere is another."""
        return hashlib.sha256(f"{self.name}\0{self.sha256}".encode()).hexdigest()


def add_batch_parser(sub: Any) -> argparse.ArgumentParser:
    batch = sub.add_parser("batch", help="submit, follow, download and cancel catalog batches (public API)")
    actions = batch.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="upload a folder of images as a batch and follow it")
    submit.add_argument("directory", type=Path)
    submit.add_argument("--kind", choices=["edit", "upscale", "sketch"], default="upscale")
    submit.add_argument("--mode", choices=["standard", "fast"], default=None)
    submit.add_argument("--prompt", default="", help="the instruction (edit), the object (sketch), extra text")
    submit.add_argument("--scale", type=float, default=None, help="upscale: output = input x scale (default 2)")
    submit.add_argument("--width", type=int, default=None)
    submit.add_argument("--height", type=int, default=None)
    submit.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    submit.add_argument("--seed", type=int, default=0, help="one seed for every item, so reruns reuse results")
    submit.add_argument("--outputs", nargs="+", choices=["image", "video"], default=["image"])
    submit.add_argument("--output-size", choices=["model", "input"], default="model")
    submit.add_argument("--webhook", default=None, help="https URL for the `batch.completed` event")
    submit.add_argument("--concurrency", type=int, default=8, help="uploads at a time")
    submit.add_argument("--no-close", action="store_true", help="leave the batch open to add more files later")
    submit.add_argument("--no-wait", action="store_true", help="return once every file is in the batch")
    for name, text in (("status", "show a batch's counts"), ("cancel", "cancel what has not finished")):
        actions.add_parser(name, help=text).add_argument("batch_id")
    download = actions.add_parser("download", help="write every output under its original file name")
    download.add_argument("batch_id")
    download.add_argument("out_dir", type=Path)
    return batch


def run_batch(args: argparse.Namespace) -> int:
    """Exit status: 0 done, 1 items failed, were canceled or refused, 2 the request could not be made."""
    with ApiClient() as api:
        try:
            if args.action == "submit":
                return submit(api, args)
            if args.action == "download":
                return download(api, args.batch_id, args.out_dir)
            path = f"/v1/batches/{args.batch_id}" + ("/cancel" if args.action == "cancel" else "")
            batch = api.json("POST" if args.action == "cancel" else "GET", path)
        except ApiFailure as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
        except httpx.HTTPError as exc:
            console.print(f"[red]{api.url} could not be reached: {exc}[/red]")
            return 2
    print_summary(batch)
    return 0


# --- submit ---------------------------------------------------------------------------------------------------------


def submit(api: ApiClient, args: argparse.Namespace) -> int:
    folder: Path = args.directory
    sources = list(scan(folder))
    if not sources:
        console.print(f"no images in {folder}")
        return 2
    batch = _resume(api, folder) or _create(api, args, folder)
    refused = 0
    if batch["status"] == "open":
        present = {item["reference"] for item in api.pages(f"/v1/batches/{batch['id']}/items", limit=500)}
        todo = [s for s in sources if s.reference not in present]
        console.print(f"batch {batch['id']}: {len(sources)} images, {len(sources) - len(todo)} already in the batch")
        print(batch["id"], flush=True)
        refused = _upload_and_append(api, batch["id"], todo, args.concurrency)
        if args.no_close:
            return 1 if refused else 0
        api.json("POST", f"/v1/batches/{batch['id']}/close")
    else:
        console.print(f"batch {batch['id']} is closed and still running; following it")
        print(batch["id"], flush=True)
    if args.no_wait:
        return 1 if refused else 0
    batch = follow(api, batch["id"])
    failed = report_failures(api, batch["id"])
    print_summary(batch)
    return 1 if refused or failed or batch["counts"]["canceled"] else 0


def scan(folder: Path) -> Iterator[Source]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            name = path.relative_to(folder).as_posix()
            yield Source(path, name, hashlib.sha256(path.read_bytes()).hexdigest())


def _resume(api: ApiClient, folder: Path) -> dict[str, Any] | None:
    state = folder / STATE_FILE
    if not state.exists():
        return None
    saved = json.loads(state.read_text())
    if saved.get("url") != api.url:
        return None
    try:
        batch = api.json("GET", f"/v1/batches/{saved['batch_id']}")
    except ApiFailure:
        return None
    if batch["status"] in ("completed", "canceled"):
        console.print(f"batch {batch['id']} is {batch['status']}; starting a new batch (unchanged results are reused)")
        return None
    return dict(batch)


def _create(api: ApiClient, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    fields = {
        "kind": args.kind,
        "mode": args.mode,
        "prompt": args.prompt,
        "scale": args.scale,
        "width": args.width,
        "height": args.height,
        "num_inference_steps": args.steps,
        "seed": args.seed,
        "outputs": args.outputs,
        "output_size": args.output_size,
        "webhook": args.webhook,
    }
    body = {name: value for name, value in fields.items() if value is not None}
    batch = api.json("POST", "/v1/batches", json={**body, "open": True, "items": []})["batch"]
    (folder / STATE_FILE).write_text(json.dumps({"batch_id": batch["id"], "url": api.url}) + "\n")
    return dict(batch)


def _upload_and_append(api: ApiClient, batch_id: str, todo: list[Source], concurrency: int) -> int:
    """Upload `todo` and append them as items; returns how many the API refused."""
    refused = 0
    with _progress() as progress, ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        task = progress.add_task("uploading", total=len(todo))
        futures = [pool.submit(_item, api, source) for source in todo]
        ready: list[dict[str, Any]] = []
        for future in as_completed(futures):
            ready.append(future.result())
            progress.advance(task)
            if len(ready) >= APPEND_CHUNK:
                refused += _append(api, batch_id, ready)
                ready = []
        refused += _append(api, batch_id, ready)
    return refused


def _item(api: ApiClient, source: Source) -> dict[str, Any]:
    content_type = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
    input_key = api.upload(source.path.read_bytes(), content_type)
    return {"input_key": input_key, "reference": source.reference, "metadata": {"filename": source.name}}


def _append(api: ApiClient, batch_id: str, items: list[dict[str, Any]]) -> int:
    if not items:
        return 0
    answer = api.json("POST", f"/v1/batches/{batch_id}/items", json={"items": items})
    for result in answer["items"]:
        if result["status"] == "rejected":
            name = items[result["index"]]["metadata"]["filename"]
            console.print(f"[red]refused[/red] {name}: {result['error']['code']}: {result['error']['message']}")
    return int(answer["rejected"])


def follow(api: ApiClient, batch_id: str, interval: float = 1.0) -> dict[str, Any]:
    """Poll the batch until every item is finished, with a progress bar of finished items."""
    with _progress() as progress:
        task = progress.add_task("running", total=None)
        while True:
            batch = api.json("GET", f"/v1/batches/{batch_id}")
            counts = batch["counts"]
            progress.update(task, total=counts["total"], completed=sum(counts[s] for s in FINISHED))
            if batch["completed_at"] is not None:
                return dict(batch)
            time.sleep(interval)


def report_failures(api: ApiClient, batch_id: str) -> int:
    failed = list(api.pages(f"/v1/batches/{batch_id}/items", status="failed", limit=500))
    for item in failed:
        name = item["metadata"].get("filename") or item["reference"]
        console.print(f"[red]failed[/red] {name}: {item['error']['code']}: {item['error']['message']}")
    return len(failed)


def print_summary(batch: dict[str, Any]) -> None:
    counts = batch["counts"]
    parts = ", ".join(f"{counts[name]} {name}" for name in ("succeeded", "failed", "canceled", "queued", "running"))
    eta = f", about {batch['eta_seconds']:.0f} s left" if batch.get("eta_seconds") else ""
    console.print(
        f"batch {batch['id']} {batch['status']}: {counts['total']} items: {parts} ({counts['cached']} reused){eta}"
    )


# --- download -------------------------------------------------------------------------------------------------------


def download(api: ApiClient, batch_id: str, out_dir: Path) -> int:
    items = [i for i in api.pages(f"/v1/batches/{batch_id}/items", limit=500) if i["status"] == "succeeded"]
    stems = Counter(_safe_stem(_name(item)) for item in items)
    written = skipped = 0
    with _progress() as progress:
        task = progress.add_task("downloading", total=len(items))
        for item in items:
            for target, output in _targets(out_dir, item, clashes=stems[_safe_stem(_name(item))] > 1):
                if target.exists() and target.stat().st_size == output["bytes"]:
                    skipped += 1
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".partial")
                partial.write_bytes(api.download(output["url"]))
                partial.replace(target)
                written += 1
            progress.advance(task)
    console.print(f"{written} files written, {skipped} already there, in {out_dir}")
    return 0


def _name(item: dict[str, Any]) -> str:
    return str(item["metadata"].get("filename") or item["reference"] or item["job_id"])


def _targets(out_dir: Path, item: dict[str, Any], clashes: bool) -> Iterable[tuple[Path, dict[str, Any]]]:
    """Where each output goes: `name.png` (`name.mp4`), or `name.jpg.png` when two inputs share the stem."""
    base = _safe_path(_name(item)) if clashes else _safe_stem(_name(item))
    suffixes = {"image": ".png", "video": ".mp4"}
    return [(out_dir / f"{base}{suffixes[name]}", output) for name, output in item["outputs"].items()]


def _safe_path(name: str) -> str:
    """The name as a path kept below the output folder (no absolute paths, no `..`; names come from the server)."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    return "/".join(parts) or "item"


def _safe_stem(name: str) -> str:
    path = PurePosixPath(_safe_path(name))
    return str(path.with_name(path.stem)) if path.stem else str(path)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )
