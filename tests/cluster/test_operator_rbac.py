"""The chart installs with helm, and its ServiceAccount can do what the operator needs, and no more."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.cluster.operator_support import LEASE_NAME, PYTHON_EXE, ROOT, SYSTEM_NS, Release, helm, kubectl


def test_chart_is_installed(chart: Release) -> None:
    status = json.loads(helm("status", chart.name, "-n", chart.namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    kubectl(
        "-n", chart.namespace, "get", f"serviceaccount/{chart.service_account}", f"deployment/{chart.name}-operator"
    )
    kubectl("get", f"clusterrole/{chart.name}-operator", f"clusterrolebinding/{chart.name}-operator")


# (verb, resource, namespace or None for all, allowed?)
SA_CAN = [
    ("watch", "basemodelpools.loraplex.io", None, True),
    ("patch", "basemodelpools.loraplex.io", "team-a", True),
    ("patch", "basemodelpools.loraplex.io:status", "team-a", True),
    ("watch", "loraadapters.loraplex.io", None, True),
    ("patch", "loraadapters.loraplex.io:status", "team-a", True),
    ("patch", "basemodelpools.loraplex.io:scale", "team-a", True),
    ("update", "basemodelpools.loraplex.io:finalizers", "team-a", True),
    ("create", "deployments.apps", "team-a", True),
    ("patch", "deployments.apps", "team-a", True),
    ("watch", "pods", None, True),
    ("create", "configmaps", "team-a", True),
    ("delete", "configmaps", "team-a", True),
    ("get", "secrets", "team-a", True),
    ("create", "roles.rbac.authorization.k8s.io", "team-a", True),
    ("create", "events", "team-a", True),
    # and no more:
    ("delete", "basemodelpools.loraplex.io", "team-a", False),
    ("patch", "loraadapters.loraplex.io", "team-a", False),  # status only: nothing of ours lives in its metadata
    ("create", "basemodelpools.loraplex.io", "team-a", False),
    ("delete", "deployments.apps", "team-a", False),
    ("create", "pods", "team-a", False),
    ("delete", "pods", "team-a", False),
    ("list", "secrets", "team-a", False),
    ("watch", "secrets", None, False),
    ("get", "nodes", None, False),
    ("create", "clusterroles.rbac.authorization.k8s.io", None, False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, False),
    ("escalate", "roles.rbac.authorization.k8s.io", "team-a", False),
    ("impersonate", "serviceaccounts", "team-a", False),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", None, False),
    ("create", "leases.coordination.k8s.io", "team-a", False),
]


@pytest.mark.parametrize(
    ("verb", "resource", "ns", "allowed"),
    SA_CAN,
    ids=[f"{v}-{r.split('.')[0]}-{'yes' if a else 'no'}" for v, r, _, a in SA_CAN],
)
def test_service_account_permissions(chart: Release, verb: str, resource: str, ns: str | None, allowed: bool) -> None:
    sa = f"system:serviceaccount:{chart.namespace}:{chart.service_account}"
    scope = ["-n", ns] if ns else ["--all-namespaces"]
    resource, _, sub = resource.partition(":")
    extra = [f"--subresource={sub}"] if sub else []
    out = kubectl("auth", "can-i", verb, resource, *extra, "--as", sa, *scope, check=False)
    assert out.stdout.strip() == ("yes" if allowed else "no"), f"{verb} {resource} in {ns}: {out.stdout}{out.stderr}"


def test_lease_permissions_are_one_lease_in_the_release_namespace(chart: Release) -> None:
    sa = f"system:serviceaccount:{chart.namespace}:{chart.service_account}"

    def can(*args: str) -> str:
        return kubectl("auth", "can-i", *args, "--as", sa, check=False).stdout.strip()

    assert can("update", f"leases.coordination.k8s.io/{LEASE_NAME}", "-n", chart.namespace) == "yes"
    assert can("update", "leases.coordination.k8s.io/other", "-n", chart.namespace) == "no"
    assert can("create", "leases.coordination.k8s.io", "-n", chart.namespace) == "yes"


def test_helm_test_check_passes_as_the_service_account(operator: object, operator_kubeconfig: str) -> None:
    """What the chart's `helm test` pod runs, run here with the same ServiceAccount."""
    env = dict(os.environ, KUBECONFIG=operator_kubeconfig)
    out = subprocess.run(
        [PYTHON_EXE, "-m", "loraplex_operator", "--check", "--lease-namespace", SYSTEM_NS, "--lease-name", LEASE_NAME],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "leader cluster-tests" in out.stdout
