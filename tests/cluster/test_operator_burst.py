"""2,000 adapters created at once all reach the routing table (benchmark output, not a timed assertion)."""

from __future__ import annotations

import pytest

from benchmarks.operator_burst import run_burst
from loraplex_operator.clients.kube import Kube
from tests.cluster.operator_support import OperatorProcess, routing_table

pytestmark = pytest.mark.slow


def test_two_thousand_adapters_at_once(
    kube: Kube, operator: OperatorProcess, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_burst(kube, namespace, 2000, table_timeout=300, ready_timeout=300)
    with capsys.disabled():
        print("\n" + result.report())
        print(f"  operator health after the burst: {operator.health()}")
    assert len(routing_table(kube, namespace).adapters) == 2000
    assert result.writes < 200, "bursts must be coalesced into few writes"
