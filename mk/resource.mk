# Growing the service: scaffold a resource
# (scripts/new_resource.py, docs/adding-a-resource.md). Needs python3 (3.11+).

##@ Resources
.PHONY: resource
resource: ## Scaffold a resource with tests and a migration: make resource name=widgets [singular=widget]
	@test -n "$$name" || { echo 'usage: make resource name=widgets [singular=widget]' >&2; exit 2; }
	python3 scripts/new_resource.py "$$name" $(if $(singular),--singular "$$singular")
