"""spec.openCatalog on the real control plane: the worker gets the policy, the sidecars' table the pool's marker,
and switching it off takes both away again (no object is written per on-demand adapter: there is none to write)."""

from __future__ import annotations

from typing import Any

from loraplex.api.open_catalog import parse_policy
from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube
from tests.cluster.operator_support import OperatorProcess, pool_manifest, routing_table, wait_until


def worker_args(kube: Kube, ns: str, name: str) -> list[str] | None:
    dep = kube.get("apps/v1", "deployments", ns, name)
    if dep is None:
        return None
    containers = dep["spec"]["template"]["spec"]["containers"]
    return next(ct for ct in containers if ct["name"] == "worker")["args"]


def policy_arg(args: list[str] | None) -> str | None:
    if not args or "--open-catalog" not in args:
        return None
    return args[args.index("--open-catalog") + 1]


def test_open_catalog_reaches_workers_and_table_and_goes_away(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    open_catalog: dict[str, Any] = {"enabled": True, "allowOwners": ["alice"], "maxFileMB": 32}
    kube.create(pool_manifest("tiny", namespace, openCatalog=open_catalog))
    raw = wait_until("the policy in the worker's args", lambda: policy_arg(worker_args(kube, namespace, "tiny")))
    policy = parse_policy(raw)
    assert policy.enabled and policy.allow_owners == ("alice",) and policy.max_file_bytes == 32 << 20
    assert policy.required_tag == "lora" and not policy.use_token  # the apiserver's defaults
    wait_until(
        "the pool marked open in the table",
        lambda: (
            (t := routing_table(kube, namespace)) is not None and "tiny" in t.pools and t.pools["tiny"].open_catalog
        ),
    )
    kube.merge_patch(c.API_VERSION, c.POOL_PLURAL, namespace, "tiny", {"spec": {"openCatalog": {"enabled": False}}})
    wait_until("the policy gone", lambda: (a := worker_args(kube, namespace, "tiny")) and policy_arg(a) is None)
    wait_until(
        "the marker gone",
        lambda: (t := routing_table(kube, namespace)) is not None and not t.pools["tiny"].open_catalog,
    )
