# A stand-in for the compose file's Prometheus image, used by tests/deploy/test_image.py only when the official
# image cannot be pulled (no image registry reachable): Debian's `prometheus` package on a Debian base, laid out
# like the official image (entry point prometheus, runs as nobody, TSDB in the volume /prometheus, port 9090).
ARG BASE=debian:12
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o nobody -g nogroup /prometheus
USER 65534:65534
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
