# The production stack on one VM (docker-compose.prod.yml).
PROD := docker compose -f docker-compose.prod.yml --env-file .env.prod

##@ Production
.PHONY: prod-up
prod-up: .env.prod ## Build and start the production stack (docker-compose.prod.yml, .env.prod)
	$(PROD) up --build --detach --wait

.PHONY: prod-down
prod-down: .env.prod ## Stop the production stack (keeps its volumes)
	$(PROD) down

.PHONY: prod-logs
prod-logs: .env.prod ## Follow the production stack's logs
	$(PROD) logs --follow --tail=100

.env.prod:
	@echo "No .env.prod: cp .env.prod.example .env.prod and fill in DOMAIN, POSTGRES_PASSWORD and SECRET_KEY." >&2
	@exit 1

.PHONY: e2e
e2e: ## Build the image and check the production stack end to end
	scripts/e2e.sh

.PHONY: image-report
image-report: ## Print the image's size over its base and its code-only rebuild time
	scripts/image-report.sh
