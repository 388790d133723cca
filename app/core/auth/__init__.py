"""Who may call the API: bearer tokens from the company's identity provider, API keys
for machines, and scopes per route (docs/auth.md). Routes use `requires` from
app/core/auth/dependencies.py; the Principal they get is in app/core/principal.py."""
