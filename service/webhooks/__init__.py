"""Webhook delivery: the delivery records and their schedule, one signed attempt, and the webhook worker process."""
