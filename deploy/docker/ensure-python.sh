#!/bin/sh
# Python 3.11+ with venv, from the distribution, unless the base image has it already (python:*-slim does; Debian
# and the CUDA runtime images do not).
set -eu
if python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    exit 0
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates
rm -rf /var/lib/apt/lists/*
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "the base image's Python is older than 3.11" >&2; exit 1; }
