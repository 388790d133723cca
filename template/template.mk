# The template's own proofs: they check the template, not a fork's service.
# Included by the Makefile only while template/ exists; `make init` deletes it.

##@ Template checks (removed by make init)
.PHONY: template-test
template-test: ## mypy on template/*.py, and the scaffold's unit tests (template/test_new_resource.py)
	$(TEST) build tests
	$(TEST) run --rm --no-deps tests sh -c 'mypy template/*.py && python -m pytest -p no:cacheprovider template/test_new_resource.py'

.PHONY: check-core
check-core: ## Core's tests on a throw-away clone with every domain package deleted
	template/check-core.sh

.PHONY: check-resource
check-resource: ## make resource name=widgets on a throw-away clone, then make lint and make test there
	template/check-resource.sh

.PHONY: check-init
check-init: ## make init name=… on a throw-away clone, then make lint and make test there
	template/check-init.sh

.PHONY: check-init-options
check-init-options: ## check-init with targets=swarm,k8s examples=no: that fork passes make lint, make test and make e2e too
	INIT_ARGS="targets=swarm,k8s examples=no" E2E=1 template/check-init.sh

.PHONY: check-clones
check-clones: ## Two clones side by side: make up and make test in both at once, nothing shared
	template/check-clones.sh

.PHONY: check-update
check-update: ## A fork at the previous release: init, a resource, a README edit, make update to HEAD; then lint and test
	template/check-update.sh

.PHONY: fork-lines
fork-lines: ## Lines a fork inherits outside app/, tests/, alembic/: make fork-lines [args="targets=vm examples=no"]
	set -f; template/fork-lines.sh $$args
