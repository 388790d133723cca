# Throughput and profiles of the production image (scripts/bench.py, bench/).

##@ Performance
.PHONY: bench
bench: ## Measure the production image side by side and check the bars (BENCH_SHORT=1: quick)
	python3 scripts/bench.py

.PHONY: bench-compare
bench-compare: ## Two bench runs side by side: make bench-compare a=before.json b=after.json
	@test -n "$(a)" -a -n "$(b)" || { echo 'usage: make bench-compare a=A.json b=B.json' >&2; exit 2; }
	python3 scripts/bench.py compare "$(a)" "$(b)"

.PHONY: profile
profile: ## Flame graph of the app under load: make profile [on=health|item|page|create]
	python3 scripts/bench.py profile $(or $(on),health)

.PHONY: bench-down
bench-down: ## Remove the bench stack (after BENCH_KEEP=1) and its images
	docker compose -f bench/compose.yml --profile metrics --profile tools down -v -t 5
	docker image rm -f $(SERVICE_NAME):bench fsbench-wrk:local fsbench-py-spy:local
