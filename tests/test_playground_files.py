"""The playground's files as the API serves and packages them: the page at `/` with its security headers, every
module it imports served as JavaScript, nothing fetched from another origin, kept out of the OpenAPI document, and
shipped in the built package (the API image installs it non-editable). The page itself is tested in a browser by
`tests/test_playground.py`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from service.api.openapi import DOCUMENT_PATH
from service.api.routes.playground import STATIC_DIR

ROOT = Path(__file__).resolve().parent.parent
IMPORT = re.compile(r"""^import\s.*?from\s+"(\./[^"]+)";""", re.MULTILINE | re.DOTALL)
ANY_URL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", re.IGNORECASE)


def static_files() -> list[Path]:
    return sorted(path for path in STATIC_DIR.rglob("*") if path.is_file())


def test_the_page_is_served_at_the_root_with_a_policy_that_keeps_requests_home(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert page.headers["referrer-policy"] == "same-origin"
    assert '<script type="module" src="playground/js/app.js">' in page.text


def test_every_module_the_page_imports_is_served_as_javascript(client: httpx.Client) -> None:
    seen: set[str] = set()
    pending = ["app.js"]
    while pending:
        name = pending.pop()
        seen.add(name)
        response = client.get(f"/playground/js/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
        pending += [m.removeprefix("./") for m in IMPORT.findall(response.text) if m.removeprefix("./") not in seen]
    assert seen == {path.name for path in (STATIC_DIR / "js").glob("*.js")}, "no module unused, none missing"
    for asset in ("playground.css", "icon.svg"):
        assert client.get(f"/playground/{asset}").status_code == 200


def test_an_unknown_asset_is_a_json_404(client: httpx.Client) -> None:
    response = client.get("/playground/js/nothing.js")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_no_file_names_another_host() -> None:
    """Everything the page uses is served by the API: no CDN, no web font, no analytics."""
    for path in static_files():
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace, not a request
        assert not ANY_URL.search(text), f"{path.relative_to(ROOT)} names another host: {ANY_URL.search(text)}"


def test_the_page_is_not_part_of_the_versioned_api() -> None:
    paths = json.loads(DOCUMENT_PATH.read_text())["paths"]
    assert "/" not in paths and not any(path.startswith("/playground") for path in paths)


def test_the_built_package_ships_every_playground_file(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    project = tmp_path / "project"  # a copy: building writes into the project folder
    for part in ("service", "worker", "chronoedit_core"):
        shutil.copytree(ROOT / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    wheel_dir = tmp_path / "wheel"
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir)]
    argv.append(str(project))
    built = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheel_dir.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {path.relative_to(ROOT).as_posix() for path in static_files()}
    assert expected <= shipped, f"missing from the package: {sorted(expected - shipped)}"
