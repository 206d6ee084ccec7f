"""The web playground: a page at `/` that tries every job kind from a browser through the public API, with the
caller's key (none in the embedded mode). Plain static files under `service/api/static/` (ES modules, no build step,
nothing from another origin); not part of the versioned API, so kept out of the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
ASSETS_PATH = "/playground"
"""Where the page's scripts, styles and icon are served."""

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        # fetch and the event stream carry the API key: the browser refuses to send them to any other origin
        "connect-src 'self'",
        # output URLs may be presigned URLs of the S3 endpoint, another origin; the picked image is a blob: URL
        "img-src 'self' blob: data: http: https:",
        "media-src 'self' blob: http: https:",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "same-origin",  # signed output URLs never leak in a Referer to another origin
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/", include_in_schema=False)
def playground_page() -> FileResponse:
    """The playground's HTML; it loads its modules from `/playground/`."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


def install_playground(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/playground/`."""
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="playground")
