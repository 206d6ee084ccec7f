# The API and the webhook worker: the torch-free part of the service.
#
#   docker build -t chronoedit-api .
#   docker run -p 8000:8000 --env-file .env chronoedit-api                 # chronoedit api
#   docker run --env-file .env chronoedit-api chronoedit webhook-worker
#
# Build arguments: BASE_IMAGE (any Debian/Ubuntu image; Python 3.11+ is installed from the distribution when the
# base has none). A CA bundle for pip behind an intercepting proxy can be given as the build secret `pip_cert`
# (`--secret id=pip_cert,src=/path/ca.pem`); it never enters an image layer.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python
COPY deploy/docker/ensure-python.sh /usr/local/sbin/ensure-python
RUN ensure-python

FROM python AS build
RUN python3 -m venv /opt/chronoedit
COPY pyproject.toml README.md /src/
COPY service /src/service
COPY worker /src/worker
COPY chronoedit_core /src/chronoedit_core
RUN --mount=type=secret,id=pip_cert,required=false \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    /opt/chronoedit/bin/pip install --no-cache-dir --disable-pip-version-check /src

FROM python
RUN useradd --system --uid 10001 --create-home --home-dir /home/chronoedit chronoedit
COPY --from=build /opt/chronoedit /opt/chronoedit
ENV PATH=/opt/chronoedit/bin:$PATH PYTHONUNBUFFERED=1 CHRONOEDIT_HOST=0.0.0.0 CHRONOEDIT_PORT=8000
USER chronoedit
WORKDIR /home/chronoedit
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['CHRONOEDIT_PORT'], timeout=2)"]
CMD ["chronoedit", "api"]
