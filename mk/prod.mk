# The production image and stack, checked end to end (docker-compose.prod.yml).

##@ Production
.PHONY: e2e
e2e: ## Build the image and check the production stack end to end
	scripts/e2e.sh

.PHONY: image-report
image-report: ## Print the image's size over its base and its code-only rebuild time
	scripts/image-report.sh
