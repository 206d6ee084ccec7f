"""The `chronoedit` command line: serving (the embedded stack, API, workers), keys, models, the OpenAPI document, and
the client commands (`batch`, `edit`) that use only the public HTTP API."""

from service.cli.main import main

__all__ = ["main"]
