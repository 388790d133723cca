# Fault injection on the production stack under load, each fault against its bar (docs/chaos.md).
# scripts/chaos.py needs only Docker (Compose v2) and Python 3.11+ on this machine.
PYTHON ?= python3

##@ Chaos
.PHONY: chaos
chaos: ## Inject faults into the production stack under load and check each against its bar (fault=redis-stop, short=1, set=NAME=VALUE)
	set -f; $(PYTHON) scripts/chaos.py $(if $(short),--short) $$(for s in $$set; do printf -- "--set=%s\n" "$$s"; done) $$fault
