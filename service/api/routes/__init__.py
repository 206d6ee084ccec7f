"""The API's routes, one module per resource; `service/api/app.py` includes each module's `router`."""
