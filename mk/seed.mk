##@ Development data
.PHONY: seed
seed: ## Fill the dev database with sample items and orders (make seed n=200)
	$(DEV) run --rm --no-deps api python scripts/seed.py "$${n:-50}"
