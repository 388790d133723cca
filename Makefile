# Everything you run, locally and in CI. `make` lists the targets.
# Docker (with Compose v2) and make run everything; uv on the host is needed only
# for `make pytest` and the pre-commit hooks. `make init` needs python3.

.DEFAULT_GOAL := help
SHELL := /bin/bash

# Containers write files into the checkout as you, not root (see docker-compose.yml).
export HOST_UID := $(shell id -u)
export HOST_GID := $(shell id -g)

# The service's name lives in one place, pyproject.toml's [project] name; image names,
# the app's title, OCI labels, the Swarm stack and the scripts read it from there.
export SERVICE_NAME := $(shell sed -n 's/^name = "\(.*\)"$$/\1/p' pyproject.toml | head -n 1)

# A value from .env (written by `make init`), or nothing. Only plain KEY=value lines.
dotenv = $(shell sed -n 's/^$(1)=//p' .env 2>/dev/null | tail -n 1)

# This checkout's Compose project: PROJECT in .env, else the directory's name made
# valid the way Compose does it. Each clone gets its own containers, volumes,
# networks and image; the tests run as "<project>-test".
PROJECT ?= $(or $(call dotenv,PROJECT),$(shell basename "$(CURDIR)" | tr 'A-Z' 'a-z' | tr -cd 'a-z0-9_-' | sed 's/^[-_]*//'))
export PROJECT
API_PORT ?= $(or $(call dotenv,API_PORT),8000)
DEBUGPY ?= $(call dotenv,DEBUGPY)
DEBUGPY_PORT ?= $(or $(call dotenv,DEBUGPY_PORT),5678)

# `make debug` (or DEBUGPY=1) adds the debugger's port to the API container.
DEV := docker compose -p $(PROJECT) -f docker-compose.yml $(if $(filter 1 true,$(DEBUGPY)),-f docker-compose.debug.yml)
TEST := docker compose -p $(PROJECT)-test -f docker-compose.test.yml
# Every checker runs, even after one fails; the exit status says whether any did.
# The Python scripts outside the mypy `files` of pyproject.toml, checked the same way
# (k8s_*.py, where kept, run in a venv of their own). One module name per run.
MYPY_SCRIPTS := $(filter-out scripts/k8s_%,$(wildcard scripts/*.py)) deploy/backup/pgbackup.py
SHELL_SCRIPTS := $(wildcard scripts/*.sh scripts/*/*.sh deploy/*/*.sh template/*.sh .ci/run)
LINT := status=0; \
	for check in "ruff check ." "ruff format --check ." "mypy" "mypy $(MYPY_SCRIPTS)" "mypy bench/floors.py" "mypy bench/unauthenticated.py" "mypy bench/jobless.py" "mypy bench/jobs.py" \
	  "hadolint Dockerfile Dockerfile.dev" "shellcheck --severity=warning $(SHELL_SCRIPTS)" \
	  "python -m scripts.check_settings" "lint-imports --no-cache"; do \
	  echo "--- $$check"; $$check || { status=1; failed="$$failed\n  $$check"; }; \
	done; \
	if [ $$status -ne 0 ]; then printf "\nFailed:$$failed\n"; else echo "--- all checks passed"; fi; exit $$status

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^##@ / {printf "\n%s\n", substr($$0, 5)} /^[a-z0-9-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Getting started
.PHONY: init
# On the template's own checkout, a name first makes the fork (template/make_fork.py).
FORK = $(and $(name),$(wildcard template/make_fork.py))
init: ## Write .env (fresh secrets, free ports); on the template, `make init name=acme-orders [targets=vm,swarm,k8s] [examples=no]` makes your fork
	$(if $(or $(targets),$(examples)),$(if $(FORK),,$(error $(if $(wildcard template/make_fork.py),targets= and examples= go with name= (make init name=acme-orders targets=vm),targets= and examples= choose what a fork keeps as it is made from the template; this checkout is a fork: remove what it does not use by hand (docs/adding-a-resource.md, "Removing a resource")))))
	$(if $(FORK),python3 template/make_fork.py --name "$$name" $(if $(targets),--targets "$$targets") $(if $(examples),--examples "$$examples"))
	python3 scripts/init.py $(if $(name),--name "$$name")

.PHONY: update
update: ## Merge the template's changes since .template.toml's revision: make update [ref=v1.2.0] [from=URL]
	python3 scripts/update.py $(if $(ref),--ref "$$ref") $(if $(from),--from "$$from")

##@ Development stack
.PHONY: up
# A service that never turns healthy (a bad setting, a failed migration): its own last
# lines say why, not only Compose's "is unhealthy".
SAY_WHY = || { $(DEV) logs --no-color --tail 12 migrate api worker >&2; \
  echo "the services' last lines are above (all of them: make logs)" >&2; exit 1; }

up: ## Start Postgres, Redis, migrations, the API and the job worker, with auto-reload
	$(DEV) up --build --detach --wait api worker $(SAY_WHY)
	@echo
	@echo "  API:  http://localhost:$(API_PORT)          (project $(PROJECT))"
	@echo "  Docs: http://localhost:$(API_PORT)/docs"
	@echo "  Logs: make logs     Stop: make down"

.PHONY: debug
debug: ## `make up`, with debugpy listening on localhost:DEBUGPY_PORT (5678) for your editor
	@$(MAKE) --no-print-directory up DEBUGPY=1
	@echo "  Debugger: attach to localhost:$(DEBUGPY_PORT) (.vscode/launch.json)"

.PHONY: restart
restart: ## Recreate the API and the job worker after a .env change (code changes reload by themselves)
	$(DEV) up --detach --wait --force-recreate --no-deps api worker $(SAY_WHY)

.PHONY: url
url: ## Print the development API's URL (its port is in .env)
	@echo "http://localhost:$(API_PORT)"

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
migrate: ## Apply migrations to the development database, then print its revision and head
	$(DEV) run --rm migrate sh -c \
	  'alembic upgrade head && echo "database at: $$(LOG_LEVEL=WARNING alembic current 2>/dev/null)" && echo "latest:      $$(LOG_LEVEL=WARNING alembic heads 2>/dev/null)"'

.PHONY: revision
# The message reaches alembic through the environment, never through a shell's quoting:
# "don't" and "$HOME" stay as typed.
revision: export MESSAGE = $(value m)
revision: ## Autogenerate a migration from the models: make revision m="add orders"
	@test -n "$$MESSAGE" || { echo 'usage: make revision m="what it does"'; exit 2; }
	$(DEV) run --rm -e MESSAGE migrate sh -c 'alembic upgrade head && alembic revision --autogenerate -m "$$MESSAGE"'

.PHONY: client
client: ## Generate a typed Python client from the OpenAPI schema into clients/python
	$(DEV) run --rm --no-deps --build api scripts/client.sh

##@ Quality
.PHONY: test
test: ## Run the tests with coverage in a throw-away stack of their own; make test only=tests/widgets: those alone, no coverage
	$(TEST) build tests
	$(TEST) run --rm tests $(if $(only),pytest --no-cov $(only)); status=$$?; $(TEST) down --volumes --remove-orphans >/dev/null 2>&1; exit $$status

.PHONY: lint
lint: ## Run every checker (ruff, mypy --strict, hadolint, shellcheck, import contracts, settings), then fail if any failed
	$(DEV) run --rm --no-deps --build api sh -c '$(LINT)'

.PHONY: pytest
pytest: ## Run the tests with uv on this machine, against DATABASE_URL and REDIS_URL
	uv run --frozen pytest --cov

.PHONY: fmt
fmt: ## Format the code and apply safe lint fixes
	$(DEV) run --rm --no-deps --build api sh -c 'ruff format . && ruff check --fix .'

# Each area keeps its targets in mk/<area>.mk (production, chaos, bench, fuzz, orchestrators).
include $(sort $(wildcard mk/*.mk))
# The template's own proofs (template/): `make init` deletes them, so a fork has none.
-include template/template.mk
