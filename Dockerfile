# syntax=docker/dockerfile:1
# securitylake-sink: receives Forward (24224) and HTTP (8088) from Fluent Bit, Fluentd and Vector,
# spools on /var/lib/securitylake-sink and writes OCSF Parquet to Amazon Security Lake.
#
#   docker build -t securitylake-sink .
#   docker run -v sink-data:/var/lib/securitylake-sink -v $PWD/config.yaml:/etc/securitylake-sink/config.yaml:ro \
#     -p 24224:24224 securitylake-sink
#
# Without a mounted config the image runs conf/sink/local.yaml: a file:// lake on the volume.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: the project's wheel and the wheels of its dependencies (binary wheels only, so
# neither stage needs a compiler)
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY plugin ./plugin
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --only-binary=:all: --wheel-dir /wheels /wheels/securitylake_sink-*.whl

# ---- the image: the installed wheels, a non-root user, the spool volume
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="securitylake-sink" \
      org.opencontainers.image.description="Receives logs from Fluent Bit, Fluentd and Vector and lands them in Amazon Security Lake as OCSF Parquet" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels securitylake-sink \
 && groupadd --system --gid 10001 sink \
 && useradd --system --uid 10001 --gid sink --home-dir /var/lib/securitylake-sink --no-create-home \
      --shell /usr/sbin/nologin sink \
 && mkdir -p /var/lib/securitylake-sink/spool /var/lib/securitylake-sink/lake /etc/securitylake-sink \
 && chown -R sink:sink /var/lib/securitylake-sink

COPY conf/sink/local.yaml /etc/securitylake-sink/config.yaml

# The spool (write-ahead log, batches, dead letters) and, with the default config, the lake:
# keep it on a volume, or an acked chunk can be lost with the container.
VOLUME /var/lib/securitylake-sink
WORKDIR /var/lib/securitylake-sink
USER 10001:10001

# 24224 Forward protocol, 8088 HTTP (listen.http), 2021 /metrics /healthz /readyz (listen.metrics).
EXPOSE 24224 8088 2021

# The check runs inside the container, so the metrics listener's default 127.0.0.1:2021 answers
# it; Prometheus or kubelet outside need listen.metrics.address 0.0.0.0:2021 (the default config
# has it). Moved the listener? Set SINK_HEALTHCHECK_URL. No curl in a slim image: Python's urllib.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('SINK_HEALTHCHECK_URL', 'http://127.0.0.1:2021/healthz'), timeout=4)"]

ENTRYPOINT ["securitylake-sink"]
CMD ["run", "-c", "/etc/securitylake-sink/config.yaml"]
