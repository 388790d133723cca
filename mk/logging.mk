# Logging's cost: the old path against the app's, side by side (scripts/bench_logging.py).

##@ Logging
.PHONY: bench-logging
bench-logging: ## Time access lines and in-process requests, old logging path vs new (~1 min)
	$(TEST) build tests
	$(TEST) run --rm --no-deps tests python scripts/bench_logging.py $(args)
