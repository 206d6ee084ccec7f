"""What the API and the workers share about a job: the record, the store and its transitions, the events each change
sets off, the Celery queues, watching, the worker registry, the reconciler and the public view of a job."""
