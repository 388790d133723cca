# Credentials for the development stack (docs/auth.md). In production, API keys are
# made with a one-off of the api image; tokens come from your identity provider.
AUTH_AUDIENCE ?= $(or $(call dotenv,AUTH_AUDIENCE),$(PROJECT))
KEYS := python -m app.core.auth.keys

##@ Authentication
.PHONY: token
token: ## Print a dev token, valid 1 h, with every scope the API declares: make token [scopes="items:read"] [sub=alice]
	@$(DEV) exec -T issuer python scripts/dev_issuer.py --keys /keys --issuer http://issuer:8080 \
	  token --audience "$(AUTH_AUDIENCE)" $(if $(scopes),--scopes "$$scopes") $(if $(sub),--sub "$$sub")

.PHONY: api-key
api-key: ## Make an API key, printed once: make api-key name=ci-bot scopes="items:read items:write" [expires=90 (days)]
	@test -n "$$name" && test -n "$$scopes" || \
	  { echo 'usage: make api-key name=ci-bot scopes="items:read" [expires=DAYS]'; exit 2; }
	@$(DEV) exec -T api $(KEYS) create "$$name" $$scopes $(if $(expires),--expires-in-days "$$expires")

.PHONY: api-keys
api-keys: ## List the API keys: name, scopes, expiry, last use (never the secrets)
	@$(DEV) exec -T api $(KEYS) list

.PHONY: revoke-api-key
revoke-api-key: ## Revoke an API key: make revoke-api-key name=ci-bot (every worker within seconds)
	@test -n "$$name" || { echo 'usage: make revoke-api-key name=ci-bot'; exit 2; }
	@$(DEV) exec -T api $(KEYS) revoke "$$name"
