# syntax=docker/dockerfile:1
# twc3-mqtt-bridge: Tesla Wall Connector Gen 3 local API → MQTT.
# Plain python:3.11-slim on both stages: builds the same on amd64 and arm64 (no arch-specific
# downloads). Build:  docker build -t twc3-mqtt-bridge .
# Run:    docker run -v ./bridge.toml:/config/bridge.toml:ro -v twc3-data:/data twc3-mqtt-bridge

############################ builder: a venv with the dependencies, then the package
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change,
# not on every code edit. constraints.txt pins every one of them (and theirs): the image gets
# the versions the tests ran with.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt

# Then the package itself (README.md is the project's long description).
COPY README.md ./
COPY bridge/ ./bridge/
RUN pip install --no-cache-dir --no-deps . \
    && twc3-bridge --version

############################ runtime: the venv only, a non-root user, no build tools
FROM python:3.11-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    TWC3_BRIDGE_CONFIG=/config/bridge.toml \
    XDG_STATE_HOME=/data

# XDG_STATE_HOME=/data: a config without [bridge] data_dir still keeps its state inside the
# volume (at /data/twc3-bridge); the example configs set data_dir = "/data".
RUN groupadd --system --gid 10001 twc3 \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin twc3 \
    && mkdir -p /config /data \
    && chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv

LABEL org.opencontainers.image.title="twc3-mqtt-bridge" \
      org.opencontainers.image.description="Tesla Wall Connector Gen 3 local API to MQTT bridge (read-only)" \
      org.opencontainers.image.source="https://github.com/twc3-mqtt-bridge/twc3-mqtt-bridge" \
      org.opencontainers.image.licenses="MIT"

VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

# Healthy once the bridge completed a poll-and-publish cycle within the last 120 s (it needs
# the broker and at least one unit answering); see `twc3-bridge healthcheck --help`.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["twc3-bridge", "healthcheck"]

# Exec form: SIGTERM reaches Python directly, which publishes twc3/bridge/state = offline.
STOPSIGNAL SIGTERM
ENTRYPOINT ["twc3-bridge"]
CMD ["run"]
