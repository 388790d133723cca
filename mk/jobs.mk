# Background jobs in the development stack (docs/jobs.md). On the VM, the same commands
# run in a worker container: docker compose -f docker-compose.prod.yml run --rm --no-deps -T worker python -m app.core.jobs.cli …
# `run`, not `exec`: the commands need only the database, and a stopped or crash-looping
# worker is when they are needed most.
JOBS_CLI := $(DEV) run --rm --no-deps -T worker python -m app.core.jobs.cli
# The ids are checked in the shell ($$id: make passes its command-line variables) and
# never pasted into the command line, so an id cannot carry a command.
CHECK_JOB_IDS = case "$$id" in *[0-9]*) ;; *) false;; esac && case "$$id" in *[!0-9\ ]*) false;; esac || \
  { echo 'usage: make $@ id="12 13" (job ids: numbers, from make jobs)' >&2; exit 2; }

##@ Background jobs
.PHONY: jobs
jobs: ## List the jobs that used every attempt (failed), and what waits (backlog)
	@$(JOBS_CLI) failed
	@$(JOBS_CLI) backlog

.PHONY: retry-job
retry-job: ## Queue failed jobs again, attempts reset: make retry-job id="12 13"
	@$(CHECK_JOB_IDS)
	@$(JOBS_CLI) retry $$id

.PHONY: drop-job
drop-job: ## Delete failed or queued jobs that must never run: make drop-job id="12 13" (their log stays)
	@$(CHECK_JOB_IDS)
	@$(JOBS_CLI) drop $$id
