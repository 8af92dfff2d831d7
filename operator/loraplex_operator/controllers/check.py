"""`loraplex operator --check` (the chart's `helm test`): is the operator installed and alive?

Passes when the apiserver serves both CRDs and, with leader election, a
replica holds the Lease and renewed it recently. Prints one line per check.
"""

from __future__ import annotations

from datetime import UTC, datetime

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube, KubeError
from loraplex_operator.controllers.leader import LEASE_API


def run_check(kube: Kube, lease_namespace: str, lease_name: str, leader_election: bool, now: float) -> int:
    ok = True
    try:
        doc = kube.request("GET", f"/apis/{c.API_VERSION}") or {}
        served = {r.get("name") for r in doc.get("resources", [])}
    except KubeError as e:
        served, ok = set(), False
        print(f"FAIL cannot read /apis/{c.API_VERSION}: {e}")
    for plural in (c.POOL_PLURAL, c.ADAPTER_PLURAL):
        if plural in served:
            print(f"ok   {plural}.{c.GROUP} is served")
        else:
            ok = False
            print(f"FAIL {plural}.{c.GROUP} is not served (are the CRDs installed?)")
    if leader_election:
        try:
            lease = kube.get(LEASE_API, "leases", lease_namespace, lease_name)
        except KubeError as e:
            lease = None
            print(f"FAIL cannot read lease {lease_namespace}/{lease_name}: {e}")
        spec = (lease or {}).get("spec") or {}
        holder, renewed = spec.get("holderIdentity"), spec.get("renewTime")
        age = _age(renewed, now) if renewed else None
        limit = 3 * int(spec.get("leaseDurationSeconds") or 15)
        if holder and age is not None and age <= limit:
            print(f"ok   leader {holder} renewed lease {lease_namespace}/{lease_name} {age:.0f}s ago")
        else:
            ok = False
            print(f"FAIL no live leader on lease {lease_namespace}/{lease_name} (holder={holder!r}, age={age})")
    return 0 if ok else 1


def _age(stamp: str, now: float) -> float | None:
    try:
        when = datetime.strptime(stamp.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        try:
            when = datetime.strptime(stamp.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z")
        except ValueError:
            return None
    return now - when.astimezone(UTC).timestamp()
