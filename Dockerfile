# syntax=docker/dockerfile:1
# nichotplug: `nichotplug serve` (admission webhooks, action API, MAC controller) for Harvester.
# Build: docker build -t rancher/harvester-nichotplug:0.1.0 .

# -- build: a wheel of nichotplug and wheels of its runtime dependencies only (no test extras) ---------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY nichotplug ./nichotplug
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels /wheels/nichotplug-*.whl

# -- runtime: the wheels installed into a venv, run as an unprivileged user -----------------------------
FROM python:3.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/nichotplug/bin:$PATH
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/nichotplug \
 && /opt/nichotplug/bin/pip install --no-index --find-links /wheels nichotplug \
 && /opt/nichotplug/bin/python -m compileall -q /opt/nichotplug/lib \
 && groupadd --gid 10001 nichotplug \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nichotplug
USER 10001:10001
EXPOSE 9443 8080
# No HEALTHCHECK: Kubernetes probes /readyz and /healthz (see charts/nichotplug).
ENTRYPOINT ["nichotplug", "serve"]
