"""The import directions between the parts of the code (README, "Code layout"), declared as import-linter contracts
in pyproject.toml: the job system and webhook delivery never import the HTTP front end, workers never import it
either, model code knows nothing of the service, and the torch-free parts never import torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "PYTHONSAFEPATH": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_import_direction_holds() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_worker_importing_the_http_front_end_is_caught(tmp_path: Path) -> None:
    for part in ("service", "worker", "chronoedit_core"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    runtime = tmp_path / "worker" / "runtime.py"
    runtime.write_text(runtime.read_text() + "\nfrom service.api.errors import ApiError  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "GPU workers never import the HTTP front end" in result.stdout
    assert "worker.runtime -> service.api.errors" in result.stdout
