# Deploying to one VM: the production stack (docker-compose.prod.yml), with its settings in .env:
# the same file a plain `docker compose -f docker-compose.prod.yml up -d` reads.
PROD := docker compose -f docker-compose.prod.yml
# .env holds the database passwords and the backups' keys: no one else on the VM may read it.
ENV_PRIVATE = @[ -z "$$(find -L .env -perm /077 2>/dev/null)" ] || \
  echo "warning: .env can be read by other users of this machine: chmod 600 .env" >&2

##@ Deploy to a VM
.PHONY: prod-up
# On a failure, the last lines of each service that is neither healthy (or running
# without a healthcheck) nor done: one that exited with an error, is unhealthy, or is
# restarting or starting again. A bad setting is named there; Compose only says a
# dependency failed.
prod-up: .env ## Build and start the production stack (docker-compose.prod.yml, settings in .env)
	$(ENV_PRIVATE)
	@$(PROD) up --build --detach --wait || { status=$$?; \
	  failed=$$($(PROD) ps -a --format '{{.Service}} {{.State}} {{.ExitCode}} {{.Health}}' | \
	    awk '$$2 != "created" && !($$2 == "running" && ($$4 == "healthy" || $$4 == "")) && !($$2 == "exited" && $$3 == 0) {print $$1}'); \
	  [ -z "$$failed" ] || $(PROD) logs --no-color --tail 15 $$failed >&2; \
	  echo "make prod-up: $${failed:-the stack} did not start (its last lines are above)." \
	    "A setting changed on a running stack goes in with make deploy: it checks the" \
	    "new one while the old apis serve." | fold -s -w 88 >&2; \
	  exit $$status; }

.PHONY: deploy
deploy: .env ## Roll the api to a new build with no failed request (`make deploy pull=1`: pull API_IMAGE)
	$(ENV_PRIVATE)
	scripts/deploy.sh $(if $(pull),--pull)

.PHONY: prod-down
prod-down: .env ## Stop the production stack (keeps its volumes)
	$(PROD) down

# The file goes in through stdin: a single-file bind mount stays on the file it was
# given, and `git pull` (like most editors) replaces the file rather than edit it.
.PHONY: proxy-reload
proxy-reload: .env ## Apply deploy/Caddyfile to the running proxy without a restart's gap (caddy reload)
	$(PROD) exec -T proxy sh -c 'cat >/tmp/Caddyfile && caddy reload --config /tmp/Caddyfile --adapter caddyfile' <deploy/Caddyfile

.PHONY: prod-logs
prod-logs: .env ## Follow the production stack's logs
	$(PROD) logs --follow --tail=100

.env:
	@echo "No .env: cp .env.prod.example .env, then fill in DOMAIN, POSTGRES_PASSWORD, APP_DB_PASSWORD and REDIS_PASSWORD." >&2
	@exit 1

.PHONY: deploy-check
deploy-check: ## Kill a worker, then deploy a new build, under load through the proxy; fail on any failed request
	$(PYTHON) scripts/chaos.py worker-kill deploy

