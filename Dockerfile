# syntax=docker/dockerfile:1
# nichotplug: `nichotplug serve` (admission webhooks, action API, MAC controller) for Harvester.
# Build: docker build -t rancher/harvester-nichotplug:0.1.0 .

# -- build: a wheel of nichotplug alone (.dockerignore leaves nichotplug/testing out of the context) ------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY nichotplug ./nichotplug
RUN pip wheel --no-deps --wheel-dir /wheels .

# -- runtime: the locked runtime requirements (pinned, hash-checked) and that wheel, in a venv, run as an
# unprivileged user. requirements.lock is made from setup.cfg by the command in its header.
FROM python:3.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/nichotplug/bin:$PATH
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    python -m venv /opt/nichotplug \
 && /opt/nichotplug/bin/pip install --require-hashes -r /tmp/requirements.lock \
 && /opt/nichotplug/bin/pip install --no-deps --no-index /wheels/nichotplug-*.whl \
 && /opt/nichotplug/bin/pip check \
 && /opt/nichotplug/bin/python -m compileall -q /opt/nichotplug/lib \
 && groupadd --gid 10001 nichotplug \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nichotplug
USER 10001:10001
EXPOSE 9443 8080
# No HEALTHCHECK: Kubernetes probes /readyz and /healthz (see charts/nichotplug).
ENTRYPOINT ["nichotplug", "serve"]
