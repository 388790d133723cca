#!/usr/bin/env bash
# `make client` (runs in the dev container): a typed Python client for this API,
# generated from its OpenAPI schema by openapi-python-client (pinned in uv.lock).
# The schema comes from the app itself, the same document /openapi.json serves, so
# no stack needs to be running. Output: clients/openapi.json and clients/python/.
set -euo pipefail

out=clients
mkdir -p "$out"
python -c 'import json; from app.main import app; print(json.dumps(app.openapi(), indent=2))' \
  >"$out/openapi.json"
# --meta uv: a package with its own pyproject.toml (and its own ruff settings), ready
# for `uv add ./clients/python` or `pip install ./clients/python` in another project.
openapi-python-client generate --path "$out/openapi.json" --output-path "$out/python" \
  --meta uv --overwrite --fail-on-warning
echo "client: $out/python ($(python -c 'import json; print(len(json.load(open("'"$out"'/openapi.json"))["paths"]))') paths)"
