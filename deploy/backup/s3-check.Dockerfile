# An S3-compatible server for `make backup-check-s3` (scripts/backup-check-s3.sh): Moto's
# server, from PyPI, over TLS with a certificate it makes itself. A test double of a
# bucket, never a place to keep backups.
FROM python:3.13-slim-trixie
RUN pip install --no-cache-dir "moto[server]==5.2.5"
EXPOSE 9000
CMD ["moto_server", "--host", "0.0.0.0", "--port", "9000", "--ssl"]
