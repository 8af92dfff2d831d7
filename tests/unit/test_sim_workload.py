"""Fleet simulator workloads: the generators' statistics, determinism, growth, flash crowds, trace files."""

from __future__ import annotations

import numpy as np
import pytest

from loraplex.sim.workload import (
    DAY_S,
    WorkloadSpec,
    build_workload,
    distinct_per_window,
    diurnal_rate,
    fit_zipf_exponent,
    make_catalog,
    mmpp_rates,
    mmpp_times,
    nhpp_times,
    poisson_times,
    read_trace,
    spread_bases,
    write_trace,
    zipf_weights,
)


def test_poisson_rate_and_exponential_gaps() -> None:
    rng = np.random.default_rng(1)
    t = poisson_times(2.0, 20_000.0, rng)
    assert abs(len(t) / 20_000.0 - 2.0) < 0.05  # rate within 2.5%
    gaps = np.diff(t)
    assert abs(gaps.mean() - 0.5) < 0.02
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential: coefficient of variation 1


def test_zipf_exponent_is_recovered() -> None:
    for s in (0.8, 1.1):
        rng = np.random.default_rng(2)
        draws = rng.choice(5000, size=200_000, p=zipf_weights(5000, s))
        counts = np.bincount(draws, minlength=5000)
        assert abs(fit_zipf_exponent(counts, top=100) - s) < 0.1


def test_diurnal_mean_and_peak_to_trough() -> None:
    fn = diurnal_rate(1.0, peak_to_trough=3.0, peak_hour=15.0)
    hours = np.arange(0, 24, 0.01) * 3600
    r = fn(hours)
    assert abs(r.mean() - 1.0) < 1e-3
    assert abs(r.max() / r.min() - 3.0) < 1e-3
    assert abs(hours[np.argmax(r)] / 3600 - 15.0) < 0.02
    t = nhpp_times(fn, 1.5001, DAY_S, np.random.default_rng(3))
    assert abs(len(t) / DAY_S - 1.0) < 0.02
    peak = ((t > 13 * 3600) & (t < 17 * 3600)).sum()
    trough = ((t > 1 * 3600) & (t < 5 * 3600)).sum()
    assert 2.3 < peak / trough < 3.2


def test_mmpp_mean_rate_and_burstiness() -> None:
    q, b = mmpp_rates(1.0, burst_factor=5.0, burst_share=0.2)
    assert abs(0.8 * q + 0.2 * b - 1.0) < 1e-9 and abs(b / q - 5.0) < 1e-9
    t = mmpp_times((q, b), (1200.0, 300.0), 200_000.0, np.random.default_rng(4))
    assert abs(len(t) / 200_000.0 - 1.0) < 0.08
    counts = np.bincount((t // 60).astype(int))
    assert counts.var() / counts.mean() > 3.0  # over-dispersed: a Poisson process would give about 1


def test_base_split_is_spread_over_ranks() -> None:
    bases = spread_bases(2500, (("sdxl", 0.92), ("sd15", 0.08)))
    assert bases[0] == 0
    assert (bases == 1).sum() == 200
    for block in range(0, 2500, 250):  # every stretch of the ranking has its share
        assert 17 <= (bases[block : block + 250] == 1).sum() <= 23


def test_seed_like_workload_statistics() -> None:
    w = build_workload(WorkloadSpec(rate=0.1, zipf_s=1.1, traffic="poisson", duration_s=6 * 3600), seed=5)
    assert abs(len(w) / w.duration_s - 0.1) < 0.01
    assert 7 <= distinct_per_window(w, 120.0) <= 12  # the seed: about 10 distinct LoRAs per 2 minutes
    share = (w.catalog.base[w.adapter] == 0).mean()
    assert 0.88 < share < 0.97
    assert np.all(np.diff(w.t) >= 0)


def test_same_seed_same_workload_other_seed_differs() -> None:
    spec = WorkloadSpec(n_adapters=300, rate=0.5, duration_s=3600.0, traffic="mmpp")
    a, b, c = build_workload(spec, 7), build_workload(spec, 7), build_workload(spec, 8)
    assert np.array_equal(a.t, b.t) and np.array_equal(a.adapter, b.adapter)
    assert len(a) != len(c) or not np.array_equal(a.adapter, c.adapter)


def test_flash_crowd_hits_one_cold_adapter() -> None:
    spec = WorkloadSpec(
        n_adapters=1000,
        rate=0.2,
        traffic="poisson",
        duration_s=4 * 3600,
        flash_rate=1.0,
        flash_start_s=3600.0,
        flash_duration_s=600.0,
    )
    w = build_workload(spec, 1)
    inside = (w.t >= 3600) & (w.t < 4200)
    top = np.bincount(w.adapter[inside]).argmax()
    assert top >= 700  # a cold adapter (rank 80% down the ranking)
    assert (w.adapter[inside] == top).sum() > 450  # ~600 extra requests in 10 minutes
    assert (w.adapter[~inside] == top).sum() < 5


def test_growing_catalog_never_requests_an_adapter_before_it_exists() -> None:
    spec = WorkloadSpec(n_adapters=2000, grow_from=500, rate=1.0, traffic="poisson", duration_s=4 * 3600)
    w = build_workload(spec, 2)
    assert (w.catalog.created == 0).sum() == 500
    assert np.all(w.catalog.created[w.adapter] <= w.t)
    late = w.adapter[w.t > 3 * 3600]
    assert (w.catalog.created[late] > 0).any()  # new adapters do get traffic


def test_catalog_names_and_sizes() -> None:
    cat = make_catalog(50, mb=30.0)
    assert cat.names[0] == "lora-00" and cat.names[-1] == "lora-49"
    assert float(cat.mb[3]) == 30.0


def test_trace_round_trip(tmp_path) -> None:
    w = build_workload(WorkloadSpec(n_adapters=100, rate=0.2, traffic="poisson", duration_s=600.0), 3)
    path = tmp_path / "trace.csv"
    write_trace(w, path)
    r = read_trace(path)
    assert len(r) == len(w)
    np.testing.assert_allclose(r.t, w.t - w.t[0], atol=1e-3)
    assert [r.catalog.names[i] for i in r.adapter] == [w.catalog.names[i] for i in w.adapter]
    assert set(r.catalog.bases) <= {"sdxl", "sd15"}
    assert int(r.pixels[0]) == 1024 * 1024


def test_trace_minimal_columns(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("time,adapter,steps,size\n100.0,a,25,512x512\n101.5,b,30,\n103,a,,1048576\n")
    w = read_trace(path)
    assert list(w.t) == [0.0, 1.5, 3.0]
    assert list(w.steps) == [25, 30, 25]
    assert list(w.pixels) == [512 * 512, 1024 * 1024, 1024 * 1024]
    assert w.catalog.names == ["a", "b"]


def test_unknown_traffic_is_refused() -> None:
    with pytest.raises(ValueError):
        build_workload(WorkloadSpec(traffic="weekly"), 0)
