"""The OpenAPI document: FastAPI's, plus the schemas of bodies the routes read by hand. `openapi/openapi.json` is
generated from it (`chronoedit openapi`), and a test fails when the committed file drifts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.schemas import EditCreate

HAND_READ_BODIES = (EditCreate,)
"""`POST /v1/edits` takes JSON or multipart, so FastAPI does not see its body model; it is added here."""

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in HAND_READ_BODIES:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        app.openapi_schema = document
    return app.openapi_schema


def render(app: FastAPI) -> str:
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
