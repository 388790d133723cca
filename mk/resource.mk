# Growing the service: scaffold a resource, and the checks that keep that cheap
# (scripts/new_resource.py, docs/adding-a-resource.md). Needs python3 (3.11+).

##@ Resources
.PHONY: resource
resource: ## Scaffold a resource with tests and a migration: make resource name=widgets [singular=widget]
	@test -n "$(name)" || { echo 'usage: make resource name=widgets [singular=widget]' >&2; exit 2; }
	python3 scripts/new_resource.py "$(name)" $(if $(singular),--singular "$(singular)")

.PHONY: check-resource
check-resource: ## make resource name=widgets on a throw-away clone, then make lint and make test there
	scripts/check-resource.sh

.PHONY: check-core
check-core: ## Core's tests on a throw-away clone with every domain package deleted
	scripts/check_core_standalone.sh
