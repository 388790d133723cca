# An S3-compatible server for `make backup-check-s3` (scripts/restore-check.sh s3): Moto's
# S3, from PyPI, served over TLS by Gunicorn with a self-signed certificate made at
# build time. Gunicorn rather than `moto_server --ssl`: Werkzeug's development server
# ends TLS connections without a close_notify, which pgBackRest's client rejects. A
# test double of a bucket, never a place to keep backups.
FROM python:3.13-slim-trixie
RUN pip install --no-cache-dir "moto[server]==5.2.5" "gunicorn==27.0.1" \
 && python -c "from werkzeug.serving import make_ssl_devcert; make_ssl_devcert('/srv/s3', host='s3')" \
 && printf 'from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app\napp = DomainDispatcherApplication(create_backend_app)\n' >/srv/moto_s3.py
WORKDIR /srv
EXPOSE 9000
CMD ["gunicorn", "--bind", "0.0.0.0:9000", "--worker-class", "gthread", "--threads", "8", "--keep-alive", "30", \
     "--certfile", "/srv/s3.crt", "--keyfile", "/srv/s3.key", "moto_s3:app"]
