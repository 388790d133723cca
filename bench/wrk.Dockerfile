# The load generator for `make bench`: wrk from Debian's packages, on the bench network.
FROM debian:trixie-slim

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends wrk \
 && rm -rf /var/lib/apt/lists/*

USER 65534:65534
CMD ["sleep", "infinity"]
