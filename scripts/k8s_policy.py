"""The template's own rules for Kubernetes manifests, on rendered YAML.

    kubectl kustomize deploy/k8s/overlays/production | python scripts/k8s_policy.py -
    python scripts/k8s_policy.py rendered.yaml ...

Prints one line per finding and exits 1 if there is any. A schema validator says a
manifest is well-formed; this says it is safe to run: every container has resources,
the hardened security context and (if long-running) its probes; the grace period
covers the drain (and the job worker's jobs); the image is pinned; the URLs that carry
passwords come from a Secret; every Deployment has a PDB and a NetworkPolicy; the
Ingress is served on HTTPS only. scripts/k8s_validate.py runs it, and proves each rule
can fail.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

# Workloads whose pods serve for a long time, and so need probes, a PDB and a
# NetworkPolicy. Jobs and CronJobs run to completion: resources and security only.
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
RUN_TO_COMPLETION = {"Job", "CronJob"}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
RESOURCES = ("requests.cpu", "requests.memory", "limits.cpu", "limits.memory")
# The image's default (gunicorn_conf.py) when the setting is not given.
DEFAULT_GRACEFUL_TIMEOUT = 20
# The job worker's: JOBS_TIMEOUT's default (app/core/config.py), and the rollback a job
# cut at that timeout may still take (ROLLBACK_SECONDS, app/core/jobs/worker.py).
DEFAULT_JOBS_TIMEOUT = 50.0
JOB_ROLLBACK_SECONDS = 2.0
# Settings whose URL carries a password: read from the Secret's files, never from `env` or
# a ConfigMap, where a value would be in the clear and win over the file.
SECRET_SETTINGS = ("DATABASE_URL", "REDIS_URL")
# Documentation addresses (RFC 5737): the base's placeholders, never a real server.
PLACEHOLDER_NETWORKS = [
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
]


@dataclass(frozen=True)
class Finding:
    rule: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule} {self.where}: {self.message}"


def load_manifests(texts: Iterable[str]) -> list[Manifest]:
    """Every non-empty YAML document in the given texts."""
    return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]


def _name(doc: Manifest) -> str:
    meta = doc.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{doc['kind']}/{namespace + '/' if namespace else ''}{meta.get('name')}"


def _get(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def pod_template(doc: Manifest) -> Manifest | None:
    """The pod template of a workload (metadata and spec), or None for other kinds."""
    if doc["kind"] == "Pod":
        return doc
    if doc["kind"] == "CronJob":
        return _get(doc, "spec.jobTemplate.spec.template") or {}
    if doc["kind"] in LONG_RUNNING | RUN_TO_COMPLETION | {"ReplicaSet"}:
        return _get(doc, "spec.template") or {}
    return None


def _containers(pod_spec: Manifest) -> Iterator[tuple[Manifest, bool]]:
    """Each container, and whether it is an init container (those run once, unprobed)."""
    for container in pod_spec.get("initContainers") or []:
        yield container, True
    for container in pod_spec.get("containers") or []:
        yield container, False


def check_resources(where: str, container: Manifest) -> Iterator[Finding]:
    resources = container.get("resources") or {}
    missing = [key for key in RESOURCES if _get(resources, key) in (None, "")]
    if missing:
        yield Finding("resources", where, "missing " + ", ".join(missing))


def check_security(where: str, pod_spec: Manifest, container: Manifest) -> Iterator[Finding]:
    pod_sc = pod_spec.get("securityContext") or {}
    sc = container.get("securityContext") or {}

    def effective(key: str) -> Any:
        # A container's value wins over the pod's, as in Kubernetes.
        return sc[key] if key in sc else pod_sc.get(key)

    problems = []
    if effective("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if effective("runAsUser") == 0:
        problems.append("runAsUser is 0")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        problems.append("privileged")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    elif "/tmp" not in {m.get("mountPath") for m in container.get("volumeMounts") or []}:  # noqa: S108
        problems.append("read-only root without a writable /tmp volume")
    if "ALL" not in (_get(sc, "capabilities.drop") or []):
        problems.append("capabilities do not drop ALL")
    if _get(sc, "capabilities.add"):
        problems.append("capabilities added back")
    if (_get(effective("seccompProfile"), "type") or "") not in {"RuntimeDefault", "Localhost"}:
        problems.append("no seccompProfile RuntimeDefault (or Localhost)")
    if problems:
        yield Finding("security", where, "; ".join(problems))


def check_probes(where: str, container: Manifest) -> Iterator[Finding]:
    missing = [probe for probe in PROBES if not container.get(probe)]
    if missing:
        yield Finding("probes", where, "missing " + ", ".join(missing))
    liveness = _get(container, "livenessProbe.httpGet.path")
    if liveness is not None and liveness == _get(container, "readinessProbe.httpGet.path"):
        yield Finding(
            "probes",
            where,
            f"liveness and readiness both probe {liveness}: a dependency outage would "
            "restart every pod (liveness must touch no dependency)",
        )


def check_image(where: str, container: Manifest) -> Iterator[Finding]:
    image = container.get("image") or ""
    last = image.rsplit("/", 1)[-1]
    if "@" not in last and (":" not in last or last.endswith(":latest")):
        yield Finding("image", where, f"image {image!r} is not pinned to a tag or digest")


def _setting(container: Manifest, name: str, config_maps: dict[str, Manifest]) -> str | None:
    """A container's environment variable, from `env` or an `envFrom` ConfigMap."""
    for var in container.get("env") or []:
        if var.get("name") == name and "value" in var:
            return str(var["value"])
    for source in container.get("envFrom") or []:
        ref = _get(source, "configMapRef.name")
        value = _get(config_maps.get(ref), f"data.{name}") if ref else None
        if value is not None:
            return str(value)
    return None


def check_secret_settings(
    where: str, container: Manifest, config_maps: dict[str, Manifest]
) -> Iterator[Finding]:
    for name in SECRET_SETTINGS:
        if _setting(container, name, config_maps) is not None:
            yield Finding(
                "secrets", where, f"{name} is set in env or a ConfigMap: it belongs in the Secret"
            )


def check_grace(
    where: str, pod_spec: Manifest, container: Manifest, config_maps: dict[str, Manifest]
) -> Iterator[Finding]:
    """SIGKILL must not come before the preStop sleep and Gunicorn's drain have ended, nor,
    for the job worker, before the jobs it runs have finished or timed out."""
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    if "app.worker" in [*(container.get("command") or []), *(container.get("args") or [])]:
        timeout = float(_setting(container, "JOBS_TIMEOUT", config_maps) or DEFAULT_JOBS_TIMEOUT)
        if grace <= timeout + JOB_ROLLBACK_SECONDS:
            yield Finding(
                "grace",
                where,
                f"terminationGracePeriodSeconds {grace} is not longer than JOBS_TIMEOUT "
                f"({timeout:g} s) plus a job's rollback ({JOB_ROLLBACK_SECONDS:g} s): every "
                "deploy would kill jobs still running, each kill one of their attempts",
            )
        return
    pre_stop = _get(container, "lifecycle.preStop.sleep.seconds") or 0
    graceful = int(
        _setting(container, "GUNICORN_GRACEFUL_TIMEOUT", config_maps) or DEFAULT_GRACEFUL_TIMEOUT
    )
    if grace <= pre_stop + graceful:
        yield Finding(
            "grace",
            where,
            f"terminationGracePeriodSeconds {grace} is not longer than the preStop sleep "
            f"({pre_stop} s) plus GUNICORN_GRACEFUL_TIMEOUT ({graceful} s)",
        )


def selects(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector picks pods with these labels (an empty one picks all)."""
    if selector is None:
        return False
    if selector.get("matchExpressions"):
        return False  # not used in this template; do not guess
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_workload(doc: Manifest, docs: list[Manifest]) -> Iterator[Finding]:
    template = pod_template(doc)
    if template is None:
        return
    spec = template.get("spec") or {}
    config_maps = {_get(d, "metadata.name"): d for d in docs if d["kind"] == "ConfigMap"}
    long_running = doc["kind"] in LONG_RUNNING
    for container, is_init in _containers(spec):
        where = f"{_name(doc)} container {container.get('name')}"
        yield from check_resources(where, container)
        yield from check_security(where, spec, container)
        yield from check_image(where, container)
        yield from check_secret_settings(where, container, config_maps)
        if long_running and not is_init:
            yield from check_probes(where, container)
            yield from check_grace(where, spec, container, config_maps)
    if spec.get("automountServiceAccountToken") is not False:
        yield Finding("security", _name(doc), "automountServiceAccountToken is not false")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            yield Finding("security", _name(doc), f"{host} is true")
    if long_running:
        yield from check_coverage(doc, template, docs)


def check_coverage(doc: Manifest, template: Manifest, docs: list[Manifest]) -> Iterator[Finding]:
    """A PDB and a NetworkPolicy select the pods; an HPA-scaled workload leaves replicas alone."""
    labels = _get(template, "metadata.labels") or {}
    namespace = _get(doc, "metadata.namespace")

    def same_namespace(kind: str) -> list[Manifest]:
        return [d for d in docs if d["kind"] == kind and _get(d, "metadata.namespace") == namespace]

    if not any(
        selects(_get(d, "spec.selector"), labels) for d in same_namespace("PodDisruptionBudget")
    ):
        yield Finding("coverage", _name(doc), "no PodDisruptionBudget selects its pods")
    for direction in ("Ingress", "Egress"):
        if not any(
            selects(_get(d, "spec.podSelector"), labels)
            and direction in (_get(d, "spec.policyTypes") or ["Ingress"])
            for d in same_namespace("NetworkPolicy")
        ):
            yield Finding(
                "coverage", _name(doc), f"no NetworkPolicy restricts its pods' {direction.lower()}"
            )
    scaled = any(
        _get(d, "spec.scaleTargetRef.kind") == doc["kind"]
        and _get(d, "spec.scaleTargetRef.name") == _get(doc, "metadata.name")
        for d in same_namespace("HorizontalPodAutoscaler")
    )
    if scaled and "replicas" in (doc.get("spec") or {}):
        yield Finding(
            "coverage",
            _name(doc),
            "sets replicas although an HPA scales it: every apply would reset the count",
        )


def check_network_policy(doc: Manifest) -> Iterator[Finding]:
    rules = (_get(doc, "spec.ingress") or []) + (_get(doc, "spec.egress") or [])
    for rule in rules:
        for peer in (rule.get("from") or []) + (rule.get("to") or []):
            cidr = _get(peer, "ipBlock.cidr")
            if not cidr:
                continue
            network = ipaddress.ip_network(cidr, strict=False)
            if any(
                network.subnet_of(p) for p in PLACEHOLDER_NETWORKS if p.version == network.version
            ):
                yield Finding(
                    "placeholder",
                    _name(doc),
                    f"{cidr} is a documentation address: set the real one in the overlay",
                )


# Traefik routes an Ingress on every entrypoint unless told: plain HTTP's `web` too.
HTTPS_ONLY = {"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"}


def check_ingress(doc: Manifest) -> Iterator[Finding]:
    if _get(doc, "spec.ingressClassName") != "traefik":
        return
    annotations = _get(doc, "metadata.annotations") or {}
    for key, value in HTTPS_ONLY.items():
        if annotations.get(key) != value:
            yield Finding("https", _name(doc), f"{key} is not {value}: served on plain HTTP too")


def check(docs: list[Manifest]) -> list[Finding]:
    """Every finding for a set of rendered manifests (one overlay's output)."""
    findings: list[Finding] = []
    for doc in docs:
        findings.extend(check_workload(doc, docs))
        if doc["kind"] == "NetworkPolicy":
            findings.extend(check_network_policy(doc))
        if doc["kind"] == "Ingress":
            findings.extend(check_ingress(doc))
    return findings


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[0], "\nusage: k8s_policy.py FILE... (- for stdin)")
        return 2
    texts = [sys.stdin.read() if arg == "-" else Path(arg).read_text() for arg in argv]
    findings = check(load_manifests(texts))
    for finding in findings:
        print(finding)
    print(f"k8s policy: {len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
