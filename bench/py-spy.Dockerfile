# The sampling profiler for `make profile`: py-spy, run as a sidecar that shares the
# API container's process namespace (--pid=container:...) with SYS_PTRACE added.
FROM python:3.13-slim-trixie

RUN pip install --no-cache-dir py-spy==0.4.3

ENTRYPOINT ["py-spy"]
