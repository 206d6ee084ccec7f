"""Weights you can trust: a manifest beside the weights lists every weight file with its SHA-256, and a worker
verifies it before it becomes ready.

`chronoedit manifest DIR` writes `DIR/chronoedit-manifest.json`; `verify_manifest(DIR)` re-hashes every listed file
(in parallel threads: hashlib releases the GIL) and raises `ManifestError` naming each mismatch, missing file or
unlisted file. Every file is listed, weights and the configs and tokenizer beside them. The manifest's own digest
(over the sorted file digests) identifies the base model on jobs.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from chronoedit_core.errors import ChronoEditError

MANIFEST_NAME = "chronoedit-manifest.json"
CHUNK = 8 * 1024 * 1024


class ManifestError(ChronoEditError):
    code = "manifest_mismatch"


@dataclass(frozen=True)
class Manifest:
    files: dict[str, str]
    """Path relative to the model folder -> SHA-256 hex digest."""

    @property
    def digest(self) -> str:
        lines = "".join(f"{path}\t{sha}\n" for path, sha in sorted(self.files.items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({"version": 1, "digest": self.digest, "files": dict(sorted(self.files.items()))}, indent=1)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[str]:
    """Every file of the model folder but the manifest itself, as paths relative to the folder."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def _hash_all(folder: Path, names: list[str], threads: int) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(zip(names, pool.map(lambda name: sha256_file(folder / name), names), strict=True))


def build_manifest(folder: Path, threads: int = 8) -> Manifest:
    return Manifest(files=_hash_all(folder, weight_files(folder), threads))


def write_manifest(folder: Path) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(build_manifest(folder).to_json() + "\n")
    return path


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
        return Manifest(files=dict(data["files"]))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path} does not exist; write it with `chronoedit manifest {folder}`") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path} is not a valid manifest: {exc}") from exc


def verify_manifest(folder: Path, threads: int = 8) -> Manifest:
    """Hash every weight file and compare with the manifest; returns it when everything matches."""
    manifest = read_manifest(folder)
    present = weight_files(folder)
    problems = [f"missing: {name}" for name in manifest.files if name not in present]
    problems += [f"not in the manifest: {name}" for name in present if name not in manifest.files]
    checked = [name for name in manifest.files if name in present]
    actual = _hash_all(folder, checked, threads)
    problems += [f"SHA-256 differs: {name}" for name in checked if actual[name] != manifest.files[name]]
    if problems:
        raise ManifestError(f"{folder} does not match its manifest: " + "; ".join(problems))
    return manifest
