# Prometheus from Debian's package, for machines without access to an image registry (CI).
# Same entrypoint contract as prom/prometheus: arguments go straight to the server.
#
#   docker build -f docker/prometheus.Dockerfile --build-arg BASE_IMAGE=edgebed/base:bookworm \
#       -t edgebed/prometheus:local docker/
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* \
    && mkdir -p /prometheus /etc/prometheus \
    && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
