# Throughput of the production image against plain FastAPI (scripts/bench.py, bench/,
# docs/benchmarks.md).

##@ Performance
.PHONY: bench
bench: ## Measure the production image side by side and check the bars (BENCH_SHORT=1: quick)
	python3 scripts/bench.py

.PHONY: profile
profile: ## Flame graph of the app under load: make profile [on=health|item|item-bearer|page|create]
	python3 scripts/bench.py profile "$${on:-health}"

.PHONY: bench-down
bench-down: ## Remove the bench stack (after BENCH_KEEP=1) and its images
	docker compose -f bench/compose.yml down -v -t 5
	docker image rm -f $(SERVICE_NAME):bench fsbench-wrk:local fsbench-py-spy:local
