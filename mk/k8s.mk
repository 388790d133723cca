# Kubernetes manifests (deploy/k8s), validated offline: no cluster is needed or used.
# The validators live in a virtualenv of their own under .cache/, built on first use
# and rebuilt when deploy/k8s/validate-requirements.txt changes.
K8S_CACHE := .cache/k8s-validate
K8S_VENV := $(K8S_CACHE)/venv
K8S_REQUIREMENTS := deploy/k8s/validate-requirements.txt
K8S_PYTHON ?= python3

##@ Kubernetes
.PHONY: k8s-validate
k8s-validate: $(K8S_VENV)/.installed ## Render every deploy/k8s overlay; check schemas (1.32-1.37) and policy
	$(K8S_VENV)/bin/python scripts/k8s_validate.py --kubectl $(K8S_VENV)/bin/kubectl

.PHONY: k8s-render
k8s-render: $(K8S_VENV)/.installed ## Print an overlay's manifests: make k8s-render overlay=staging
	$(K8S_VENV)/bin/kubectl kustomize "deploy/k8s/overlays/$${overlay:-production}"

$(K8S_VENV)/.installed: $(K8S_REQUIREMENTS)
	rm -rf $(K8S_VENV)
	mkdir -p $(K8S_CACHE)
	@# Keep the cache out of git without touching the project's .gitignore.
	echo '*' > $(K8S_CACHE)/.gitignore
	$(K8S_PYTHON) -m venv $(K8S_VENV)
	$(K8S_VENV)/bin/pip install --quiet --disable-pip-version-check -r $(K8S_REQUIREMENTS)
	touch $@
