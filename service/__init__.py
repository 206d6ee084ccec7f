"""The service around the model: the HTTP API (`api/`), the job system it shares with the workers (`jobs/`), webhook
delivery (`webhooks/`) and the command line (`cli/`, whose worker commands import the model code when they run);
settings, storage, logs, metric families, API keys and the outbound address guard at this level, used by all of
them. None of it imports torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("chronoedit-service")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
