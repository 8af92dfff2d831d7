"""The Helm chart: one source of truth for the CRDs, lint-clean, hardened, least privilege."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplex_operator import constants as c
from loraplex_operator.logic.manifests import pool_labels as c_pool_labels

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "loraplex"


def helm() -> str | None:
    cache = Path(os.environ.get("LORAPLEX_K8S_CACHE", Path.home() / ".cache" / "loraplex" / "k8s")) / "bin" / "helm"
    return str(cache) if cache.exists() else shutil.which("helm")


def render(*sets: str) -> list[dict[str, Any]]:
    h = helm()
    if h is None:
        pytest.skip("helm is not built (tools/k8s/build.sh)")
    args = [h, "template", "lp", str(CHART), "--namespace", "loraplex-system"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


MONITORING_ON = (
    "monitoring.podMonitor.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboard.enabled=true",
)
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def test_chart_crds_are_the_crds_directory() -> None:
    source = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert source == chart and source
    for name in source:
        assert (ROOT / "crds" / name).read_bytes() == (CHART / "crds" / name).read_bytes(), (
            f"charts/loraplex/crds/{name} drifted from crds/{name}: cp crds/*.yaml charts/loraplex/crds/"
        )


def test_default_images_match_the_operator_and_dockerfiles() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    app = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert f"{values['image']['operator']['repository']}:{app}" == c.DEFAULT_OPERATOR_IMAGE
    assert f"{values['image']['inference']['repository']}:{app}" == c.DEFAULT_INFERENCE_IMAGE
    crd = yaml.safe_load((ROOT / "crds" / "loraplex.io_basemodelpools.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["image"]["default"] == c.DEFAULT_INFERENCE_IMAGE
    for dockerfile in ("Dockerfile.operator", "Dockerfile.inference"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert 'ENTRYPOINT ["loraplex"]' in text and "USER 10001:10001" in text


@pytest.mark.parametrize(
    "sets",
    [
        (),
        (
            "rbac.scope=namespaced",
            "rbac.watchNamespaces={team-a,team-b}",
            "gateway.enabled=true",
            "examplePool.enabled=true",
        ),
        MONITORING_ON,
    ],
)
def test_helm_lint_is_clean(sets: tuple[str, ...]) -> None:
    h = helm()
    if h is None:
        pytest.skip("helm is not built (tools/k8s/build.sh)")
    args = [h, "lint", "--strict", str(CHART)]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout and "[INFO]" not in out.stdout


def test_values_schema_rejects_bad_values() -> None:
    h = helm()
    if h is None:
        pytest.skip("helm is not built (tools/k8s/build.sh)")
    for bad in (
        "rbac.scope=everything",
        "operator.replicas=-1",
        "nope=1",
        "operator.leaderElection=false,operator.replicas=2",
    ):
        out = subprocess.run(
            [h, "template", "lp", str(CHART), "--set", bad], capture_output=True, text=True, timeout=60
        )
        assert out.returncode != 0, bad


def test_operator_pod_is_hardened() -> None:
    docs = render()
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    ct = pod["containers"][0]
    sc = ct["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert ct["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ct["image"] == c.DEFAULT_OPERATOR_IMAGE
    assert ct["args"][0] == "operator"


def _rules(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] == kind for r in d["rules"]]


def test_rbac_is_least_privilege() -> None:
    docs = render()
    rules = _rules(docs, "ClusterRole")
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("", "secrets", "get") in granted and ("", "secrets", "list") not in granted
    assert ("apps", "deployments", "delete") not in granted  # garbage collection deletes, not us
    assert ("", "pods", "create") not in granted
    lease = _rules(docs, "Role")
    assert all(r["apiGroups"] == ["coordination.k8s.io"] for r in lease)


def test_namespaced_scope_has_no_cluster_role() -> None:
    docs = render("rbac.scope=namespaced", "rbac.watchNamespaces={team-a,team-b}")
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    roles = {
        d["metadata"]["namespace"]
        for d in docs
        if d["kind"] == "Role" and not d["metadata"]["name"].endswith("leader-election")
    }
    assert roles == {"team-a", "team-b"}
    dep = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LORAPLEX_WATCH_NAMESPACES"] == "team-a,team-b"


def test_gateway_and_example_pool() -> None:
    docs = render(
        "gateway.enabled=true",
        "examplePool.enabled=true",
        "examplePool.adapters[0].name=pixel",
        "examplePool.adapters[0].source.type=path",
        "examplePool.adapters[0].source.path=/l/p.safetensors",
    )
    gw = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway"))
    ct = gw["spec"]["template"]["spec"]["containers"][0]
    assert ct["args"][0] == "sidecar" and "--worker-url" not in ct["args"]
    assert ct["args"][ct["args"].index("--table-configmaps") + 1] == "loraplex-system"
    assert gw["spec"]["template"]["metadata"]["labels"][c.LABEL_STATS] == "true"
    assert any(d["kind"] == "Service" and d["metadata"]["name"] == "loraplex-gateway" for d in docs)
    pool = next(d for d in docs if d["kind"] == c.POOL_KIND)
    adapter = next(d for d in docs if d["kind"] == c.ADAPTER_KIND)
    assert adapter["spec"]["pool"] == pool["metadata"]["name"] == "tiny"
    hooks = [d for d in docs if d["kind"] == "Pod"]
    assert hooks and hooks[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"


def test_helm_test_pod_runs_where_the_operator_runs() -> None:
    """A test pod without the operator's nodeSelector/tolerations stayed Pending (or landed on a node
    without the image) when the operator is pinned to a tainted node."""
    docs = render(
        "operator.nodeSelector.kubernetes\\.io/hostname=loraplex-real-0",
        "operator.tolerations[0].key=loraplex.io/real-node",
        "operator.tolerations[0].operator=Exists",
        "operator.tolerations[0].effect=NoSchedule",
    )
    dep = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    test_pod = next(d for d in docs if d["kind"] == "Pod")["spec"]
    assert test_pod["nodeSelector"] == dep["nodeSelector"] == {"kubernetes.io/hostname": "loraplex-real-0"}
    assert test_pod["tolerations"] == dep["tolerations"]
    assert "nodeSelector" not in next(d for d in render() if d["kind"] == "Pod")["spec"]


def test_helm_test_pod_is_kept_for_its_logs() -> None:
    """`helm test --logs` failed ("pods ... not found") when the hook deleted the pod on success."""
    hook = next(d for d in render() if d["kind"] == "Pod")["metadata"]["annotations"]
    assert "hook-succeeded" not in hook["helm.sh/hook-delete-policy"]
    assert "before-hook-creation" in hook["helm.sh/hook-delete-policy"]


def test_monitoring_is_off_by_default() -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] in MONITORING_KINDS]
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {})]


def test_monitoring_objects_carry_the_files_as_they_are() -> None:
    docs = render(
        *MONITORING_ON, "monitoring.prometheusRule.labels.release=kps", "monitoring.dashboard.namespace=grafana"
    )
    by_kind = {d["kind"]: d for d in docs if d["kind"] in MONITORING_KINDS}
    assert set(by_kind) == MONITORING_KINDS
    files = CHART / "files"
    assert by_kind["PrometheusRule"]["spec"] == yaml.safe_load((files / "prometheus-rules.yaml").read_text())
    assert by_kind["PrometheusRule"]["metadata"]["labels"]["release"] == "kps"
    for kind, key in (("PodMonitor", "podMetricsEndpoints"), ("ServiceMonitor", "endpoints")):
        spec = by_kind[kind]["spec"]
        assert spec["namespaceSelector"] == {"any": True}
        endpoint, operator = spec[key]
        assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == ("http", "/metrics", True)
        # the operator's /metrics on its health port, its pool labels kept
        assert (operator["port"], operator["path"], operator["honorLabels"]) == ("health", "/metrics", True)
        exprs = {e["key"]: set(e["values"]) for e in spec["selector"]["matchExpressions"]}
        # the labels the operator puts on a pool's pods, and the gateway's
        pod = {**c_pool_labels("tiny")}
        assert pod[c.LABEL_NAME] in exprs[c.LABEL_NAME] and pod[c.LABEL_COMPONENT] in exprs[c.LABEL_COMPONENT]
        assert {"loraplex", "gateway", "operator"} <= exprs[c.LABEL_NAME] | exprs[c.LABEL_COMPONENT]
    # The operator pod, and (for the ServiceMonitor) a Service in front of its health port, match the selectors.
    (deploy,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")]
    op_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert "health" in {p["name"] for ctr in deploy["spec"]["template"]["spec"]["containers"] for p in ctr["ports"]}
    (svc,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-operator-metrics")]
    assert svc["spec"]["selector"].items() <= op_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "health"
    for labels in (op_labels, svc["metadata"]["labels"]):
        assert labels[c.LABEL_NAME] in exprs[c.LABEL_NAME] and labels[c.LABEL_COMPONENT] in exprs[c.LABEL_COMPONENT]
    (dash,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert dash["metadata"]["namespace"] == "grafana"
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dash["data"]["loraplex-pools.json"] == (files / "grafana-dashboard.json").read_text().rstrip("\n")
