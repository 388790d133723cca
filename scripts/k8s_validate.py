"""Render every Kustomize overlay and check it offline: `make k8s-validate`.

    python scripts/k8s_validate.py [--kubectl PATH]

For each overlay under deploy/k8s/overlays:
  1. `kubectl kustomize` renders it (any error fails the run);
  2. every resource is validated strictly (unknown fields are errors) against the
     OpenAPI schemas of each Kubernetes version in KUBERNETES_VERSIONS
     (kubernetes-validate, offline);
  3. scripts/k8s_policy.py's rules must find nothing;
  4. deploy/k8s/deploy.sh's first step (labels component=config|migrate) must hold
     the migration Job and everything it needs, and not the api.
Then negative tests prove the checks can fail: each breaks the production render in
one way (a missing probe, an unknown field, ...) and expects exactly that failure.
No cluster is involved: this says the manifests are well-formed and follow the
rules, not that they run. Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from k8s_policy import LONG_RUNNING, Manifest, check, load_manifests, selects

COMPONENT = "app.kubernetes.io/component"
ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
# The oldest and newest minors supported, and every one between. The oldest is
# set by the fields used: the preStop `sleep` action (on by default since 1.30)
# and PDB unhealthyPodEvictionPolicy (GA in 1.31); 1.32 is also the oldest minor
# the large managed offerings still support. Raise both ends as clusters move on.
KUBERNETES_VERSIONS = ("1.32.0", "1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0")


def render(kubectl: str, overlay: Path) -> list[Manifest]:
    result = subprocess.run(  # noqa: S603  # our own kubectl, our own paths
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return load_manifests([result.stdout])


def schema_errors(doc: Manifest, version: str) -> list[str]:
    """Strict schema validation of one resource: unknown or mistyped fields are errors."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(root)"
        return [f"{path}: {exc.message}"]
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
        return [exc.message]
    return []


# deploy/k8s/deploy.sh applies the resources with these component labels first, waits
# for the migration Job, then applies the rest.
FIRST_STEP = {"config", "migrate"}


def migration_first_errors(docs: list[Manifest]) -> list[str]:
    """The first step of deploy.sh must hold the Job and all it needs, and no api."""
    first = [d for d in docs if d["metadata"].get("labels", {}).get(COMPONENT) in FIRST_STEP]
    present = {(d["kind"], d["metadata"]["name"]) for d in first}
    jobs = [d for d in first if d["kind"] == "Job"]
    if not jobs:
        return ["no Job labelled component=migrate"]
    errors = []
    for job in jobs:
        pod = job["spec"]["template"]
        needed = {("ServiceAccount", pod["spec"].get("serviceAccountName", "default"))}
        for container in pod["spec"]["containers"]:
            needed |= {
                ("ConfigMap", s["configMapRef"]["name"]) for s in container.get("envFrom", [])
            }
        errors += [
            f"{kind}/{name} is needed by the Job but not applied before it"
            for kind, name in sorted(needed - present)
            if name != "default"
        ]
        if not any(
            d["kind"] == "NetworkPolicy"
            and "Egress" in d["spec"].get("policyTypes", [])
            and selects(d["spec"].get("podSelector"), pod["metadata"]["labels"])
            for d in first
        ):
            errors.append("no NetworkPolicy lets the Job reach Postgres before it runs")
    errors += [
        f"{d['kind']}/{d['metadata']['name']} would roll out before the migration"
        for d in first
        if d["kind"] in LONG_RUNNING
    ]
    return errors


def validate_overlay(name: str, docs: list[Manifest]) -> int:
    """Schema and policy for one rendered overlay; prints each problem, returns their count."""
    problems = 0
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            for error in schema_errors(doc, version):
                print(f"  FAIL schema {version} {doc['kind']}/{doc['metadata']['name']}: {error}")
                problems += 1
    for finding in check(docs):
        print(f"  FAIL policy {finding}")
        problems += 1
    for error in migration_first_errors(docs):
        print(f"  FAIL order {error}")
        problems += 1
    kinds = ", ".join(sorted({d["kind"] for d in docs}))
    status = "ok" if problems == 0 else f"{problems} problem(s)"
    print(
        f"{name}: {len(docs)} resources ({kinds}) x {len(KUBERNETES_VERSIONS)} versions: {status}"
    )
    return problems


# Negative tests ------------------------------------------------------------------

Mutation = Callable[[list[Manifest]], None]


def _find(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    return next(
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    )


def _pod(docs: list[Manifest], kind: str = "Deployment") -> dict[str, Any]:
    """The pod spec of the (first) workload of this kind."""
    spec: dict[str, Any] = _find(docs, kind)["spec"]["template"]["spec"]
    return spec


def _pod_of(docs: list[Manifest], name: str) -> dict[str, Any]:
    """The pod spec of the Deployment called `name`."""
    spec: dict[str, Any] = _find(docs, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def _api(docs: list[Manifest]) -> dict[str, Any]:
    """The api container in the api Deployment."""
    container: dict[str, Any] = _pod(docs)["containers"][0]
    return container


def _drop_policies(docs: list[Manifest], direction: str) -> None:
    """Remove every NetworkPolicy that restricts this direction (default-deny included)."""
    for doc in [d for d in docs if d["kind"] == "NetworkPolicy"]:
        if direction in doc["spec"].get("policyTypes", []):
            docs.remove(doc)


def _del(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda obj: obj.pop(key)


# (what is broken, how, which policy rule must report it)
POLICY_CASES: list[tuple[str, Mutation, str]] = [
    ("no livenessProbe", lambda d: _del("livenessProbe")(_api(d)), "probes"),
    ("no startupProbe", lambda d: _del("startupProbe")(_api(d)), "probes"),
    (
        "readiness probes /health like liveness",
        lambda d: _api(d)["readinessProbe"]["httpGet"].update(path="/health"),
        "probes",
    ),
    ("no resource limits", lambda d: _del("limits")(_api(d)["resources"]), "resources"),
    (
        "Job without a memory request",
        lambda d: _del("memory")(_pod(d, "Job")["containers"][0]["resources"]["requests"]),
        "resources",
    ),
    (
        "writable root filesystem",
        lambda d: _api(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "security",
    ),
    (
        "read-only root without /tmp",
        lambda d: _api(d).update(
            volumeMounts=[m for m in _api(d)["volumeMounts"] if m["mountPath"] != "/tmp"]  # noqa: S108
        ),
        "security",
    ),
    ("capabilities kept", lambda d: _del("capabilities")(_api(d)["securityContext"]), "security"),
    (
        "privilege escalation allowed",
        lambda d: _api(d)["securityContext"].update(allowPrivilegeEscalation=True),
        "security",
    ),
    (
        "runAsNonRoot nowhere",
        lambda d: [
            _del("runAsNonRoot")(sc)
            for sc in (_pod(d)["securityContext"], _api(d)["securityContext"])
        ],
        "security",
    ),
    (
        "no seccomp profile",
        lambda d: _del("seccompProfile")(_pod(d)["securityContext"]),
        "security",
    ),
    (
        "Job as root",
        lambda d: _pod(d, "Job")["containers"][0]["securityContext"].update(
            runAsNonRoot=False, runAsUser=0
        ),
        "security",
    ),
    (
        "service account token mounted",
        lambda d: _pod(d).update(automountServiceAccountToken=True),
        "security",
    ),
    (
        "grace period shorter than preStop + drain",
        lambda d: _pod(d).update(terminationGracePeriodSeconds=30),
        "grace",
    ),
    (
        "JOBS_TIMEOUT raised past the worker's grace period",
        lambda d: (
            _pod_of(d, "worker")["containers"][0]
            .setdefault("env", [])
            .append({"name": "JOBS_TIMEOUT", "value": "120"})
        ),
        "grace",
    ),
    ("image :latest", lambda d: _api(d).update(image="api:latest"), "image"),
    (
        "REDIS_URL in the ConfigMap (no password, and it would win over the Secret's)",
        lambda d: _find(d, "ConfigMap")["data"].update(REDIS_URL="redis://10.10.1.5:6379/0"),
        "secrets",
    ),
    (
        "replicas next to an HPA",
        lambda d: _find(d, "Deployment")["spec"].update(replicas=3),
        "coverage",
    ),
    ("no PodDisruptionBudget", lambda d: d.remove(_find(d, "PodDisruptionBudget")), "coverage"),
    (
        "no PodDisruptionBudget for the worker",
        lambda d: d.remove(_find(d, "PodDisruptionBudget", "worker")),
        "coverage",
    ),
    ("no NetworkPolicy on ingress", lambda d: _drop_policies(d, "Ingress"), "coverage"),
    ("no NetworkPolicy on egress", lambda d: _drop_policies(d, "Egress"), "coverage"),
    (
        "an Ingress on plain HTTP too",
        lambda d: _find(d, "Ingress")["metadata"]["annotations"].pop(
            "traefik.ingress.kubernetes.io/router.entrypoints"
        ),
        "https",
    ),
    (
        "placeholder Postgres address left",
        lambda d: _find(d, "NetworkPolicy", "app-to-postgres")["spec"]["egress"][1]["to"][0][
            "ipBlock"
        ].update(cidr="192.0.2.10/32"),
        "placeholder",
    ),
]

ALL = KUBERNETES_VERSIONS
# (what is broken, how, the versions that must reject it).
SCHEMA_CASES: list[tuple[str, Mutation, tuple[str, ...]]] = [
    (
        "misspelt field (readinesProbe)",
        lambda d: _api(d).update(readinesProbe=_api(d).pop("readinessProbe")),
        ALL,
    ),
    (
        "wrong type (replicas: 'two')",
        lambda d: _find(d, "Deployment")["spec"].update(replicas="two"),
        ALL,
    ),
    ("missing required field (containers)", lambda d: _del("containers")(_pod(d)), ALL),
    # Each version has its own schema: a field added in 1.33 is unknown to 1.32.
    (
        "field newer than the oldest version (lifecycle.stopSignal, 1.33)",
        lambda d: _api(d)["lifecycle"].update(stopSignal="SIGTERM"),
        ("1.32.0",),
    ),
]


def _versions(versions: tuple[str, ...]) -> str:
    if versions == ALL:
        return f"all {len(ALL)} versions"
    return ", ".join(versions) or "none"


def run_negative_tests(docs: list[Manifest], policy_cli: list[str]) -> tuple[int, int]:
    """Break the production render one way at a time; each check must catch it."""
    passed = failed = 0

    def report(ok: bool, what: str, detail: str) -> None:
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"  {'ok  ' if ok else 'FAIL'} {what}: {detail}")

    for what, mutate, rule in POLICY_CASES:
        broken = copy.deepcopy(docs)
        mutate(broken)
        rules = sorted({f.rule for f in check(broken)})
        report(rules == [rule], f"policy catches {what}", f"expected [{rule}], got {rules}")

    for what, mutate, expected in SCHEMA_CASES:
        broken = copy.deepcopy(docs)
        mutate(broken)
        caught = tuple(v for v in ALL if any(schema_errors(doc, v) for doc in broken))
        report(
            caught == expected,
            f"schema catches {what}",
            f"rejected on {_versions(caught)} (expected {_versions(expected)})",
        )

    broken = copy.deepcopy(docs)
    _find(broken, "ConfigMap")["metadata"]["labels"][COMPONENT] = "api"
    errors = migration_first_errors(broken)
    report(
        len(errors) == 1 and "ConfigMap" in errors[0],
        "order check catches a ConfigMap applied after the Job",
        f"{errors}",
    )

    # The command-line check itself exits non-zero on a bad manifest (what CI relies on).
    broken = copy.deepcopy(docs)
    _del("readinessProbe")(_api(broken))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as bad:
        yaml.safe_dump_all(broken, bad, sort_keys=False)
        bad.flush()
        result = subprocess.run(  # noqa: S603  # our own script
            [*policy_cli, bad.name], capture_output=True, text=True, check=False
        )
    report(
        result.returncode == 1,
        "k8s_policy.py exits 1 on a bad manifest",
        f"exit {result.returncode}",
    )
    return passed, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", default="kubectl", help="the kubectl to render with")
    args = parser.parse_args()

    overlays = sorted(p.parent for p in OVERLAYS.glob("*/kustomization.yaml"))
    if not overlays:
        print(f"no overlays under {OVERLAYS}")
        return 1
    print(
        f"kubernetes-validate {kubernetes_validate.__version__}, strict, versions "
        f"{KUBERNETES_VERSIONS[0]} to {KUBERNETES_VERSIONS[-1]}"
    )
    rendered = {overlay.name: render(args.kubectl, overlay) for overlay in overlays}
    bad_overlays = sum(validate_overlay(name, docs) > 0 for name, docs in rendered.items())
    if "production" not in rendered:
        print("no production overlay: the negative tests break its render")
        return 1

    print("negative tests (on the production render):")
    policy_cli = [sys.executable, str(Path(__file__).with_name("k8s_policy.py"))]
    passed, failed = run_negative_tests(rendered["production"], policy_cli)

    # One line a CI reader can count: each overlay and each negative test is one check.
    passed += len(rendered) - bad_overlays
    failed += bad_overlays
    print(f"k8s-validate: {len(rendered)} overlays, {len(ALL)} Kubernetes versions")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
