"""The torch-free side of the service: the HTTP API (`api/`), the job system it shares with the workers (`jobs/`),
webhook delivery (`webhooks/`) and the command line (`cli/`); settings, storage, logs, metric families, API keys and
the outbound address guard at this level, used by all of them.
"""
