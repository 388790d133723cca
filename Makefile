# Everything you run, locally and in CI. `make` lists the targets.
# Only Docker (with Compose v2) and make are needed: tools run in containers.

.DEFAULT_GOAL := help
SHELL := /bin/bash

# Containers write files into the checkout as you, not root (see docker-compose.yml).
export HOST_UID := $(shell id -u)
export HOST_GID := $(shell id -g)

DEV := docker compose -f docker-compose.yml
TEST := docker compose -f docker-compose.test.yml
API_PORT ?= 8000
LINT := ruff check . && ruff format --check . && mypy && hadolint Dockerfile Dockerfile.dev

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^##@ / {printf "\n%s\n", substr($$0, 5)} /^[a-z0-9-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Development stack
.PHONY: up
up: ## Start Postgres, Redis, migrations and the API with auto-reload
	$(DEV) up --build --detach --wait api
	@echo
	@echo "  API:  http://localhost:$(API_PORT)"
	@echo "  Docs: http://localhost:$(API_PORT)/docs"
	@echo "  Logs: make logs     Stop: make down"

.PHONY: down
down: ## Stop the development stack (keeps the database; `make down v=1` drops it)
	$(DEV) down --remove-orphans $(if $(v),--volumes)

.PHONY: logs
logs: ## Follow the development stack's logs
	$(DEV) logs --follow --tail=100

.PHONY: shell
shell: ## Open a shell in the API container
	$(DEV) exec api bash

.PHONY: psql
psql: ## Open psql on the development database
	$(DEV) exec db psql -U app -d app

.PHONY: migrate
migrate: ## Apply migrations to the development database
	$(DEV) run --rm migrate

.PHONY: revision
revision: ## Autogenerate a migration from the models: make revision m="add orders"
	@test -n "$(m)" || { echo 'usage: make revision m="what it does"'; exit 2; }
	$(DEV) run --rm migrate sh -c 'alembic upgrade head && alembic revision --autogenerate -m "$(m)"'

##@ Quality
.PHONY: test
test: ## Run the tests with coverage in a throw-away stack of their own
	$(TEST) build tests
	$(TEST) run --rm tests; status=$$?; $(TEST) down --volumes --remove-orphans >/dev/null 2>&1; exit $$status

.PHONY: lint
lint: ## Check lint, formatting, types and Dockerfiles (ruff, mypy --strict, hadolint)
	$(DEV) run --rm --no-deps --build api sh -c '$(LINT)'

.PHONY: pytest
pytest: ## Run the tests with uv on this machine, against DATABASE_URL and REDIS_URL
	uv run --frozen pytest --cov

.PHONY: fmt
fmt: ## Format the code and apply safe lint fixes
	$(DEV) run --rm --no-deps --build api sh -c 'ruff format . && ruff check --fix .'

# Each area keeps its targets in mk/<area>.mk (production, chaos, bench, fuzz, orchestrators).
include $(sort $(wildcard mk/*.mk))
