# Docker Swarm: deploy/swarm/stack.yml, tested for real (docs/swarm.md).
NODES ?= 1

##@ Swarm
.PHONY: swarm-e2e
swarm-e2e: ## Deploy the Swarm stack, check its backups, roll it out and back under load, restore, then leave the swarm (NODES=2: two daemons)
	NODES=$(NODES) scripts/swarm-e2e.sh

.PHONY: swarm-deploy
swarm-deploy: ## Deploy or upgrade the Swarm stack: DOMAIN=api.example.com make swarm-deploy IMAGE=registry/my-service:1.4.0
	@test -n "$$IMAGE" || { echo 'usage: DOMAIN=api.example.com make swarm-deploy IMAGE=registry/$(SERVICE_NAME):TAG' >&2; exit 2; }
	scripts/swarm/deploy.sh "$$IMAGE"

.PHONY: swarm-restore
swarm-restore: ## Restore the Swarm stack's database: the latest state, or `make swarm-restore at="2026-12-06 10:00:00+00"`
	scripts/swarm/restore.sh "$$at"
