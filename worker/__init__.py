"""Celery GPU workers: each worker process holds one loaded ChronoEdit pipeline and runs one job at a time."""
