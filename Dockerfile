# Production image: Gunicorn managing Uvicorn workers, as a non-root user.
#   docker build --build-arg SERVICE_NAME=my-service -t my-service .
# The builder stage installs the locked dependencies into /opt/venv; the runtime
# stage gets that virtualenv and the app's code, and nothing else (no compiler,
# no uv, no tests). Development uses Dockerfile.dev instead.

# uv as a stage of its own: Dependabot updates FROM lines, not an image a COPY names.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.13-slim-trixie AS builder

# binutils for `strip`: some wheels (uvloop, asyncpg) ship their extensions with
# debug symbols, tens of MB the runtime never uses.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*

COPY --from=uv /uv /bin/uv

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv

# Only the lock and the project file: code changes never re-run this layer.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --locked --no-dev --no-install-project \
 && find /opt/venv -name '*.so' -exec strip --strip-debug {} +


FROM python:3.13-slim-trixie AS runtime

# A fixed uid/gid, so volume permissions and policies can name it. No way up from it
# where no-new-privileges is not set (Swarm cannot set it): no setuid or setgid
# programs (su, mount, passwd...). No pip: nothing is installed at run time.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin app \
 && find / -xdev -perm /6000 -type f -exec chmod a-s {} + \
 && rm -rf /usr/local/bin/pip* /usr/local/lib/python3*/site-packages/pip* \
    /usr/local/lib/python3*/ensurepip

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENVIRONMENT=production

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Code last, owned by root and read-only to the app: it is what changes most often.
# pyproject.toml: the service's name and version, which the app reads (app/main.py).
COPY alembic.ini gunicorn_conf.py pyproject.toml ./
COPY alembic ./alembic
COPY app ./app
# Compiled now, because the container's filesystem is read-only at run time.
RUN python -m compileall -q app alembic gunicorn_conf.py

USER 10001:10001
EXPOSE 8000 9000

# The slim image has no curl; the standard library is enough.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --start-interval=1s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=2)"]

# Exec form: Gunicorn is the process that receives SIGTERM and drains the workers.
CMD ["gunicorn", "-c", "gunicorn_conf.py", "app.main:app"]

# Build metadata last, so a new revision does not invalidate any layer above.
ARG VERSION=0.1.0
ARG REVISION=unknown
# SERVICE_NAME: pyproject.toml's name (the Makefile and the Compose files pass it).
ARG SERVICE_NAME=app
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="${SERVICE_NAME}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
