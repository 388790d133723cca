# The OpenAPI fuzzer against the production stack (scripts/fuzz.sh, docs/fuzz.md).

##@ Fuzzing
.PHONY: fuzz
fuzz: ## Fuzz the production stack through the proxy against its OpenAPI document (Schemathesis)
	scripts/fuzz.sh
