# Background jobs in the development stack (docs/jobs.md). On the VM, the same commands
# run in the worker: docker compose -f docker-compose.prod.yml exec worker python -m app.core.jobs.cli …
JOBS_CLI := python -m app.core.jobs.cli

##@ Background jobs
.PHONY: jobs
jobs: ## List the jobs that used every attempt (failed), and what waits (backlog)
	@$(DEV) exec -T worker $(JOBS_CLI) failed
	@$(DEV) exec -T worker $(JOBS_CLI) backlog

.PHONY: retry-job
retry-job: ## Queue failed jobs again, attempts reset: make retry-job id="12 13"
	@test -n "$(id)" || { echo 'usage: make retry-job id="12 13"'; exit 2; }
	@$(DEV) exec -T worker $(JOBS_CLI) retry $(id)
