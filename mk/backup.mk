# Backups of the production stack's database: pgBackRest in the backup service of
# docker-compose.prod.yml. The runbook, with each command as a plain `docker compose`
# one-off: docs/backups.md.
BACKUP_COMPOSE := docker compose -f docker-compose.prod.yml

##@ Backups
.PHONY: backup
backup: .env ## Take a backup now (incremental, or what the schedule has due; `make backup type=full`)
	$(BACKUP_COMPOSE) exec backup pgbackup now $$type

.PHONY: backups
backups: .env ## List the backups and the window a restore can reach
	$(BACKUP_COMPOSE) exec backup pgbackup list

.PHONY: restore
restore: .env ## Restore the database: the latest state, or `make restore at="2026-12-06 10:00:00+00"`
	scripts/restore.sh "$$at"

.PHONY: restore-check
restore-check: ## Drill: write under load, lose the database volume, restore to a time T and to the latest; print RPO and RTO
	scripts/restore-check.sh

.PHONY: backup-check-s3
backup-check-s3: ## The same drill with the backups in an encrypted S3 bucket, the disk lost; then the bucket down
	scripts/restore-check.sh s3
