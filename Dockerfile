# The ingestor (and its Stripe simulator) as one small image: `ingestor run` by default.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed non-root user: nothing in the service needs root.
RUN groupadd --system --gid 10001 ingestor \
    && useradd --system --uid 10001 --gid ingestor --home-dir /app --shell /usr/sbin/nologin ingestor

WORKDIR /app
# Package metadata first, so a code change does not re-resolve dependencies.
COPY pyproject.toml README.md* ./
COPY ingestor ./ingestor
RUN pip install . && rm -rf /app/ingestor /app/build
COPY config ./config

# Listen on all interfaces inside the container; the health check and Prometheus need it, and
# the TLS-terminating ingress reaches the webhook listener (8081, when webhook.enabled).
ENV INGESTOR_HTTP_HOST=0.0.0.0 \
    INGESTOR_HTTP_PORT=8080 \
    INGESTOR_WEBHOOK__HOST=0.0.0.0 \
    INGESTOR_CONFIG_DIR=/app/config

USER ingestor
EXPOSE 8080 8081

# slim has no curl: probe /healthz with the standard library.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('INGESTOR_HTTP_PORT', '8080'), timeout=2)" || exit 1

# SIGTERM starts the graceful drain (commit the open batch, then stop).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ingestor"]
CMD ["run"]
