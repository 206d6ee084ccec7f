"""The webhook worker (`chronoedit webhook-worker`): a Celery worker without the model, consuming the `webhooks`
queue with a thread pool, plus a dispatcher thread that sends a delivery task for each delivery that is due.

It never imports torch and never runs on a GPU worker. Any number may run: the dispatcher claims due deliveries
atomically (`Deliveries.claim_due`), and a delivery whose task was lost comes due again after a lease.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from service.jobs.queue import make_celery
from service.jobs.system import JobSystem
from service.keys import KeyStore
from service.settings import ApiSettings
from service.webhooks.attempts import Deliverer
from service.webhooks.deliveries import Deliveries

logger = logging.getLogger(__name__)

DELIVER_TASK = "chronoedit.deliver_webhook"
WEBHOOKS_QUEUE = "webhooks"


class WebhookService:
    """Everything one webhook-worker process holds: settings, Redis, storage, the deliverer and the dispatcher."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.jobs = JobSystem(settings)
        self.deliveries = Deliveries(self.jobs.redis, self.jobs.store.keys)
        keys = KeyStore(self.jobs.redis, settings.key_prefix)
        self.deliverer = Deliverer(settings, self.deliveries, keys, self.jobs.storage)
        self.celery: Celery = make_celery(settings, name="chronoedit-webhooks")
        self.celery.conf.update(task_default_queue=WEBHOOKS_QUEUE)
        self._stop = threading.Event()
        # A claimed delivery comes due again after this long if its task never ran.
        self.lease_seconds = 3 * settings.webhook_timeout_seconds + 30

    def dispatch_once(self) -> int:
        due = self.deliveries.claim_due(self.lease_seconds)
        for subject_id, delivery_id in due:
            self.celery.send_task(DELIVER_TASK, args=[subject_id, delivery_id], queue=WEBHOOKS_QUEUE)
        return len(due)

    def start_dispatcher(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.settings.webhook_dispatch_interval_seconds):
                try:
                    self.dispatch_once()
                except Exception:  # keep dispatching through Redis hiccups
                    logger.exception("webhook dispatch pass failed")

        threading.Thread(target=loop, name="webhook-dispatcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


service = WebhookService(ApiSettings())
app = service.celery


@app.task(name=DELIVER_TASK, ignore_result=True)
def deliver_webhook(subject_id: str, delivery_id: str) -> None:
    service.deliverer.attempt(subject_id, delivery_id)


@worker_ready.connect
def _start(**_: Any) -> None:
    service.start_dispatcher()


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    service.stop()


def run() -> None:
    """Run the worker in this process (threads: deliveries wait on the network, not the CPU)."""
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            "--concurrency=8",
            f"--queues={WEBHOOKS_QUEUE}",
            "--hostname=webhooks-%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]
    )
