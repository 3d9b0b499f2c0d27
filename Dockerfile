# syntax=docker/dockerfile:1
# One image for both sides of elmo; the command picks which (docker/entrypoint.sh):
#
#   docker run elmo worker --shards 4   ./manage.py consume-pulse (the default command)
#   docker run elmo web                 gunicorn serving elmo.wsgi:application on :8000
#   docker run elmo migrate             ./manage.py migrate
#   docker run elmo manage add-forest l10n-central
#
# Build and run: docs/container.md. Settings come from the environment
# (docs/operations.md); the defaults below suit a container.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Mercurial builds C extensions: compile the pinned requirements in a stage of
# their own so that the compilers stay out of the final image.
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --requirement /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=elmo.settings \
    ELMO_VAR_DIR=/data/var \
    ELMO_REPOSITORY_BASE=/data/repos \
    PROMETHEUS_MULTIPROC_DIR=/data/metrics \
    ELMO_METRICS_ADDRESS=0.0.0.0 \
    ELMO_METRICS_PORT=9191
RUN groupadd --system --gid 10001 elmo \
    && useradd --system --uid 10001 --gid elmo --create-home --home-dir /home/elmo \
       --shell /usr/sbin/nologin elmo \
    && mkdir -p /data/repos /data/metrics /data/var \
    && chown -R elmo:elmo /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY manage.py ./
COPY elmo ./elmo
COPY shardworker ./shardworker
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/elmo-entrypoint
RUN python -m compileall -q /app

USER elmo
# Clones (ELMO_REPOSITORY_BASE) outlive the container; the metrics directory
# (PROMETHEUS_MULTIPROC_DIR) is emptied by the worker at every start.
VOLUME ["/data/repos", "/data/metrics"]
# 8000: web; 9191: the worker's /metrics, /healthz and /readyz.
EXPOSE 8000 9191

# The worker's /healthz answers 503 when the supervisor loop stalls or a shard
# is not running, and urlopen raises on it. The web service overrides this
# check (docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen(\
'http://127.0.0.1:${ELMO_METRICS_PORT:-9191}/healthz', timeout=5)"

ENTRYPOINT ["elmo-entrypoint"]
CMD ["worker"]
