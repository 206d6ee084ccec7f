"""The `chronoedit` command line: serving (the embedded stack, API, workers), keys, models, the OpenAPI document."""

from service.cli.main import main

__all__ = ["main"]
