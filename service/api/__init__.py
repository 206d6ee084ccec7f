"""The HTTP front end (FastAPI): app factory, routes by resource, request and response bodies, reading inputs,
idempotency, authentication and limits, HTTP observability and the OpenAPI document. Nothing else imports it."""
