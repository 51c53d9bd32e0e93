# The tier image: the shared FastAPI tier app with real LiteRT models, one image for every node.
# Slim on purpose: no TensorFlow, no scipy/pandas/matplotlib, no pip in the runtime venv,
# non-root, health check on /readyz. The compose stack (`edgebed compose render`) runs it once
# per node with its own command line: --tier NAME --experiment FILE (the node's class defaults
# with the experiment's tiers.NAME section). Without a command it serves the built-in node TIER.
#
#   docker build -f docker/tier.Dockerfile -t edgebed/tier .
#   docker run edgebed/tier python3 -m services.tier --tier edge-2 --class edge --host 0.0.0.0
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and the venv module
# (default python:3.11-slim; CI uses a debootstrap-built image, see docker/base-image.sh).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH
# Optional CA drop-in (certs/*.crt) for networks behind TLS-intercepting proxies.
COPY certs/ /usr/local/share/ca-certificates/edgebed/
COPY docker/install-certs.sh /usr/local/bin/edgebed-install-certs
RUN edgebed-install-certs && python3 -m venv /opt/venv
COPY docker/requirements-tier.txt /tmp/requirements-tier.txt
RUN pip install -r /tmp/requirements-tier.txt
# The edgebed package itself, without dependencies: the tier needs only the set above.
COPY pyproject.toml README.md /src/
COPY models /src/models
COPY services /src/services
COPY orchestrator /src/orchestrator
COPY netem /src/netem
COPY common /src/common
# Trim what a CPU-only Interpreter never loads: LiteRT's WebGPU accelerator, its NPU vendor
# plugins and ahead-of-time compiler, the plugin tool binary; pip itself; test suites.
RUN pip install --no-deps /src \
    && pip uninstall --yes pip setuptools wheel \
    && litert=$(echo /opt/venv/lib/python3*/site-packages/ai_edge_litert) \
    && rm -rf "$litert"/libLiteRtWebGpuAccelerator.so "$litert"/vendors "$litert"/aot \
        "$litert"/tools/apply_plugin_main \
    && find /opt/venv -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +

FROM ${BASE_IMAGE}
COPY certs/ /usr/local/share/ca-certificates/edgebed/
COPY docker/install-certs.sh /usr/local/bin/edgebed-install-certs
RUN edgebed-install-certs \
    && useradd --uid 10001 --create-home --home-dir /home/edgebed --shell /usr/sbin/nologin edgebed
COPY --from=build /opt/venv /opt/venv
COPY models /app/models
COPY data /app/data
ARG TIER=edge
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    EDGEBED_MODELS_DIR=/app/models \
    EDGEBED_DATA_DIR=/app/data \
    EDGEBED_TIER=${TIER} \
    EDGEBED_PORT=8000
USER edgebed
WORKDIR /home/edgebed
EXPOSE 8000
HEALTHCHECK --interval=2s --timeout=5s --start-period=90s --retries=5 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('EDGEBED_PORT', '8000') + '/readyz', timeout=2)"]
# `python -m services.tier` is `edgebed serve` without the rest of the CLI (whose orchestrator
# commands need pandas, which this image leaves out).
CMD ["sh", "-c", "exec python3 -m services.tier --tier \"$EDGEBED_TIER\" --host 0.0.0.0 --port \"$EDGEBED_PORT\""]
