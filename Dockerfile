# proofwatch: the watch-only daemon in a container.
#
#   docker build -t proofwatch .
#   docker volume create proofwatch-data          # holds watcher.toml, .env and the database
#   docker run --rm -v proofwatch-data:/data proofwatch init
#   docker run -d --name proofwatch --restart unless-stopped -v proofwatch-data:/data proofwatch
#
# /data/watcher.toml should use url = "sqlite:///watcher.db" (relative to the config file) and
# keep its secrets in /data/.env. `docker stop` sends SIGTERM: tini forwards it, the daemon lets
# the running job finish and exits 0 (the default 10 s grace is usually enough; raise it with
# `docker stop -t 60` for slow RPC timeouts).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WATCHER_CONFIG=/data/watcher.toml

# tini is PID 1: it forwards SIGTERM/SIGINT to proofwatch and reaps zombies.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 proofwatch \
    && useradd --system --uid 10001 --gid proofwatch --home-dir /data \
        --shell /usr/sbin/nologin proofwatch

WORKDIR /src
COPY pyproject.toml README.md ./
COPY watcher ./watcher
RUN pip install --no-cache-dir . \
    && proofwatch --help > /dev/null \
    && mkdir -p /data \
    && chown proofwatch:proofwatch /data

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]

# The optional status listener ([status] listen); bind it to 0.0.0.0:9464 inside the
# container only if you publish the port on the host's 127.0.0.1.
EXPOSE 9464

# Healthy = fresh daemon heartbeat and every chain polled successfully within
# [status] stale_seconds; works without the HTTP listener (reads the database read-only).
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["proofwatch", "status", "--check"]

ENTRYPOINT ["tini", "--", "proofwatch"]
CMD ["run"]
