"""The OpenAPI document: FastAPI's, plus the schemas of bodies the routes read by hand. `openapi/openapi.json` is
generated from it (`chronoedit openapi`), and a test fails when the committed file drifts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.batch_schemas import BatchCreate, BatchItemsAppend
from service.api.errors import ERROR_CODES
from service.api.schemas import EditCreate, PromptEnhanceCreate

HAND_READ_BODIES = (EditCreate, BatchCreate, BatchItemsAppend, PromptEnhanceCreate)
"""Bodies the routes read by hand, so FastAPI does not see their models: `POST /v1/edits` and
`POST /v1/prompts/enhance` take JSON or multipart,
and batch items are validated one by one (an invalid item must not refuse the others)."""

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            webhooks=app.webhooks.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in HAND_READ_BODIES:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        _document_error_codes(schemas)
        app.openapi_schema = document
    return app.openapi_schema


def _document_error_codes(schemas: dict[str, Any]) -> None:
    """Every stable `code` goes into the error schema: as an enum clients can generate code from, and a table."""
    code = schemas.get("ErrorBody", {}).get("properties", {}).get("code")
    if code is None:
        return
    code["enum"] = sorted(ERROR_CODES)
    rows = "".join(f"\n| {status} | `{name}` | {when} |" for name, (status, when) in ERROR_CODES.items())
    code["description"] = "A stable, machine-readable error code.\n\n| status | code | when |\n|---|---|---|" + rows


def render(app: FastAPI) -> str:
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
