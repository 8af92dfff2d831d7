"""Operator scale: N registered LoraAdapters (2,000 to 30,000) on the kwok cluster, an operator restart, a sidecar.

    python benchmarks/operator_scale.py [--adapters 2000,10000,30000] [--clients 24] [--sidecar-reloads 5]

Needs the test cluster (`eval "$(tools/k8s/cluster.sh env)"` after
`tools/k8s/cluster.sh up`, CRDs applied) and its audit log
($LORAPLEX_CLUSTER_DIR/logs/audit.log). For each N, in a new namespace, it
starts an operator here (no leader election), creates a pool with no pods
and N url-source adapters from `--clients` threads (the apiserver sets the
pace), and measures:

- creation rate, and the operator's lag: last create -> all N in the table;
- ConfigMap writes (watch events) and shard sizes;
- the operator's peak RSS (VmHWM);
- the operator's apiserver requests per adapter: writes from the audit log
  (by user agent: kopf's own and our client's), reads from our client's
  counters (kopf's reads are its list+watch streams, a handful per kind);
- status writes per adapter on creation;
- an operator restart: time until it has seen every adapter again and
  flushed the table, and the writes it made (target: none);
- a sidecar (the real process, gateway mode) reading the real ConfigMaps:
  its RSS and the time of a table reload after one shard changes (median).

It prints a table (one column per N) and the JSON of each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.operator_burst import ShardWatch, adapter_body  # noqa: E402
from loraplex_operator import constants as c  # noqa: E402
from loraplex_operator.clients.kube import USER_AGENT, Kube, KubeError  # noqa: E402

BENCH_AGENT = "loraplex-bench"
POOL = "scale"


@dataclass
class ScaleResult:
    adapters: int
    create_s: float = 0.0
    lag_s: float | None = None
    ready_s: float | None = None
    cm_writes: int = 0
    shards: int = 0
    largest_shard_bytes: int = 0
    total_shard_bytes: int = 0
    operator_rss_mb: float = 0.0
    writes: dict[str, int] = field(default_factory=dict)  # "agent verb resource[/sub]" -> count (audit log)
    reads: int = 0  # our client's GETs (kopf's list+watch not included)
    status_writes: int = 0
    restart_resume_s: float | None = None
    restart_writes: dict[str, int] = field(default_factory=dict)
    restart_rss_mb: float = 0.0
    sidecar_rss_mb: float | None = None
    sidecar_first_load_s: float | None = None
    sidecar_reload_s: float | None = None

    @property
    def operator_writes(self) -> int:
        return sum(self.writes.values())


def audit_mark(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_size


def audit_events(path: Path, mark: tuple[int, int], namespace: str) -> list[dict[str, Any]]:
    """Audit events since `mark` (audit_mark), in `namespace` (the apiserver logs writes only).

    The apiserver rotates the log at 200 MB (one backup, audit-<time>.log): if
    it did since the mark, the rest of the old file is read first.
    """
    inode, offset = mark
    parts: list[tuple[Path, int]] = []
    if path.stat().st_ino != inode:
        parts += [(p, offset) for p in path.parent.glob(path.stem + "-*" + path.suffix) if p.stat().st_ino == inode]
        offset = 0
    parts.append((path, offset))
    out = []
    for part, start in parts:
        with part.open("rb") as f:
            f.seek(start)
            for line in f:
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if (ev.get("objectRef") or {}).get("namespace") == namespace:
                        out.append(ev)
    return out


def operator_writes(events: list[dict[str, Any]]) -> dict[str, int]:
    """'agent verb resource[/subresource]' -> count, for the operator's two user agents (ours and kopf's)."""
    counts: Counter[str] = Counter()
    for ev in events:
        agent = ev.get("userAgent") or ""
        who = "kopf" if agent.startswith("kopf/") else "operator" if agent.startswith(USER_AGENT) else None
        if who is None:
            continue
        ref = ev["objectRef"]
        res = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        counts[f"{who} {ev.get('verb')} {res}"] += 1
    return dict(counts)


def rss_mb(pid: int, key: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def health(url: str) -> dict[str, Any]:
    from tests.helpers.procs import http_get

    try:  # a busy operator may answer late: that is a missed sample, not a failed run
        status, body = http_get(url + "/healthz", timeout=10)
        return json.loads(body) if status == 200 else {}
    except (OSError, ValueError):
        return {}


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_operator(ns: str, log_dir: str) -> Any:
    from tests.helpers.procs import PYTHON, free_port, start_process

    port = free_port()
    cmd = [PYTHON, "-m", "loraplex_operator", "--no-leader-election", "--namespace", ns]
    cmd += ["--health-host", "127.0.0.1", "--health-port", str(port)]
    # Pod IPs of the test cluster are fake: refuse anything off this machine; the hub is a closed local port.
    env = {"LORAPLEX_EGRESS": "local", "HF_ENDPOINT": "http://127.0.0.1:9"}
    return start_process(cmd, port, ready_path="/healthz", env=env, log_dir=log_dir)


def wait_quiet(fn: Any, settle_s: float, timeout: float) -> Any:
    """Poll `fn` (a snapshot) until it stays the same for `settle_s`; return the last value."""
    last, since, deadline = fn(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = fn()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle_s:
            break
    return last


def create_adapters(kube: Kube, ns: str, n: int, clients: int) -> float:
    names = [f"scale-{i:05d}" for i in range(n)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as ex:
        for _ in ex.map(lambda name: kube.create(adapter_body(ns, name, POOL)), names):
            pass
    return time.monotonic() - t0


def ready_count(kube: Kube, ns: str) -> int:
    items = kube.list(c.API_VERSION, c.ADAPTER_PLURAL, ns, None, True)
    return sum(1 for a in items if (a.get("status") or {}).get("phase") == "Ready")


def measure_sidecar(kube: Kube, ns: str, reloads: int, log_dir: str) -> tuple[float, float | None, float | None]:
    """A real sidecar on the namespace's ConfigMaps: (RSS MB, first load s, median reload s after one shard edit).

    The operator is stopped by then: an edited shard stays edited (the edit is
    the same JSON with trailing spaces, so the table does not change).
    """
    from tests.helpers.procs import PYTHON, free_port, http_get, start_process

    port = free_port()
    cmd = [PYTHON, "-m", "inference_pod.router", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--table-configmaps", ns, "--load-poll-interval", "0"]
    # No endpoint in the table, but the guard stays on: nothing it dials may leave the machine.
    proc = start_process(cmd, port, ready_path=None, env={"LORAPLEX_EGRESS": "local"}, log_dir=log_dir)

    def table() -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            status, body = http_get(proc.url + "/v1/stats", timeout=5)
            if status == 200:
                return json.loads(body)["table"]
        return {}

    try:
        deadline = time.monotonic() + 300
        while not table().get("loaded") and time.monotonic() < deadline:
            time.sleep(0.5)
        first = table()
        first_s = first.get("lastReloadSeconds")
        shards = sorted(
            cm["metadata"]["name"] for cm in kube.list("v1", "configmaps", ns, f"{c.LABEL_ROUTING_TABLE}=true")
        )
        target = shards[-1]
        times = []
        for i in range(reloads):
            before = table().get("lastReloadTime")
            cm = kube.get("v1", "configmaps", ns, target) or {}
            data = cm["data"][c.TABLE_DATA_KEY].rstrip() + " " * (i + 1)
            kube.merge_patch("v1", "configmaps", ns, target, {"data": {c.TABLE_DATA_KEY: data}})
            deadline = time.monotonic() + 60
            while (now := table()).get("lastReloadTime") == before and time.monotonic() < deadline:
                time.sleep(0.2)
            if now.get("lastReloadSeconds") is not None:
                times.append(now["lastReloadSeconds"])
        return rss_mb(proc.pid, "VmRSS"), first_s, statistics.median(times) if times else None
    finally:
        proc.terminate()


def run_scale(kube: Kube, n: int, clients: int, audit: Path, sidecar_reloads: int, restart: bool = True) -> ScaleResult:
    ns = f"bench-scale-{uuid.uuid4().hex[:5]}"
    res = ScaleResult(n)
    log_dir = tempfile.mkdtemp(prefix="loraplex-scale-")
    kube.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    op = None
    try:
        op = start_operator(ns, log_dir)
        kube.create(
            {
                "apiVersion": c.API_VERSION,
                "kind": c.POOL_KIND,
                "metadata": {"name": POOL, "namespace": ns},
                "spec": {
                    "model": {"name": "tiny"},
                    "replicas": 0,
                    "minReplicas": 0,
                    "maxReplicas": 1,
                    "gpu": {"count": 0},
                },
            }
        )
        deadline = time.monotonic() + 120
        while not kube.list("v1", "configmaps", ns, f"{c.LABEL_ROUTING_TABLE}=true"):
            if time.monotonic() > deadline:
                raise TimeoutError("the operator wrote no routing table for the pool within 120 s")
            time.sleep(0.2)
        watch = ShardWatch(kube, ns)
        offset = audit_mark(audit)
        reads0 = health(op.url).get("apiRequests", {}).get("GET", 0)
        t0 = time.monotonic()
        note(f"{ns}: creating {n} adapters")
        res.create_s = create_adapters(kube, ns, n, clients)
        created = t0 + res.create_s
        note(f"created in {res.create_s:.1f} s")
        if watch.wait_for(n, timeout=1200):
            res.lag_s = time.monotonic() - created
        note(f"all in the table {res.lag_s} s after the last create")
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            if ready_count(kube, ns) >= n:
                res.ready_s = time.monotonic() - created
                break
            time.sleep(5)
        # Let the last status writes and table flushes land, then count.
        wait_quiet(lambda: audit.stat().st_size, settle_s=8, timeout=300)
        watch.stop()
        res.cm_writes = watch.writes
        sizes = [len(d.encode()) for d in watch.docs.values()]
        res.shards, res.largest_shard_bytes, res.total_shard_bytes = len(sizes), max(sizes or [0]), sum(sizes)
        res.operator_rss_mb = rss_mb(op.pid)
        res.reads = health(op.url).get("apiRequests", {}).get("GET", 0) - reads0
        res.writes = operator_writes(audit_events(audit, offset, ns))
        res.status_writes = sum(v for k, v in res.writes.items() if k.endswith("loraadapters/status"))
        note(f"all Ready {res.ready_s} s after the last create; writes {res.writes}")
        # A no-op restart: the same operator comes back to the same cluster.
        op.terminate()
        op = None
        if restart:
            offset = audit_mark(audit)
            t0 = time.monotonic()
            op = start_operator(ns, log_dir)
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                h = health(op.url)
                if h.get("adapterEvents", 0) >= n and h.get("tableFlushes", 0) >= 1:
                    res.restart_resume_s = time.monotonic() - t0
                    break
                time.sleep(0.5)
            wait_quiet(lambda: (audit.stat().st_size, health(op.url).get("tableFlushes")), settle_s=10, timeout=300)
            res.restart_writes = operator_writes(audit_events(audit, offset, ns))
            res.restart_rss_mb = rss_mb(op.pid)
            note(f"restart: resumed in {res.restart_resume_s} s, writes {res.restart_writes}")
            op.terminate()
            op = None
        if sidecar_reloads:
            res.sidecar_rss_mb, res.sidecar_first_load_s, res.sidecar_reload_s = measure_sidecar(
                kube, ns, sidecar_reloads, log_dir
            )
    finally:
        if op is not None:
            op.terminate()
        with contextlib.suppress(KubeError):
            kube.delete("v1", "namespaces", None, ns)
    return res


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ms(seconds: float | None) -> str:
    return _fmt(None if seconds is None else seconds * 1000, ".0f")


def _kopf_writes(r: ScaleResult) -> int:
    return sum(v for k, v in r.writes.items() if k.startswith("kopf"))


def report(results: list[ScaleResult]) -> str:
    rows: list[tuple[str, Any]] = [
        ("adapters created", lambda r: f"{r.adapters:,}"),
        ("creation rate (/s)", lambda r: f"{r.adapters / max(r.create_s, 1e-9):.0f}"),
        ("lag: last create -> all routable (s)", lambda r: _fmt(r.lag_s, ".1f")),
        ("last create -> all status Ready (s)", lambda r: _fmt(r.ready_s, ".1f")),
        ("routing-table ConfigMap writes", lambda r: f"{r.cm_writes}"),
        ("shards (largest, total bytes)", lambda r: f"{r.shards} ({r.largest_shard_bytes:,}, {r.total_shard_bytes:,})"),
        ("operator RSS peak (MB)", lambda r: f"{r.operator_rss_mb:.0f}"),
        ("operator writes / adapter", lambda r: f"{r.operator_writes / r.adapters:.2f}"),
        ("  of which status writes / adapter", lambda r: f"{r.status_writes / r.adapters:.2f}"),
        ("  of which kopf's own / adapter", lambda r: f"{_kopf_writes(r) / r.adapters:.2f}"),
        ("operator reads (our client) / adapter", lambda r: f"{r.reads / r.adapters:.3f}"),
        ("restart: resumed in (s)", lambda r: _fmt(r.restart_resume_s, ".1f")),
        ("restart: writes", lambda r: f"{sum(r.restart_writes.values())}"),
        ("restart: operator RSS peak (MB)", lambda r: f"{r.restart_rss_mb:.0f}"),
        ("sidecar RSS (MB)", lambda r: _fmt(r.sidecar_rss_mb, ".0f")),
        ("sidecar first load (ms)", lambda r: _ms(r.sidecar_first_load_s)),
        ("sidecar reload, one shard changed (ms, median)", lambda r: _ms(r.sidecar_reload_s)),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{'N=' + format(r.adapters, ','):>22}" for r in results)]
    for name, fn in rows:
        lines.append(f"{name:{width}}  " + "  ".join(f"{fn(r):>22}" for r in results))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", default="2000", help="comma-separated sizes, e.g. 2000,10000,30000")
    p.add_argument("--clients", type=int, default=24, help="parallel creating threads (connections)")
    p.add_argument("--sidecar-reloads", type=int, default=5, help="shard edits timed in the sidecar (0: no sidecar)")
    p.add_argument("--no-restart", action="store_true", help="skip the operator restart")
    a = p.parse_args(argv)

    import yaml

    from loraplex_operator.clients.kube import load_configuration

    config_path = os.environ.get("KUBECONFIG", "")
    context = (yaml.safe_load(Path(config_path).read_text()) or {}).get("current-context") if config_path else None
    if context != "loraplex-test":
        print(f"refusing: KUBECONFIG context {context!r} is not the test cluster 'loraplex-test'", file=sys.stderr)
        return 2
    audit = Path(os.environ.get("LORAPLEX_CLUSTER_DIR", Path.home() / ".cache/loraplex/cluster")) / "logs/audit.log"
    if not audit.exists():
        print(f"refusing: no audit log at {audit} (start the cluster with tools/k8s/cluster.sh up)", file=sys.stderr)
        return 2
    kube = Kube(load_configuration(), workers=a.clients, user_agent=BENCH_AGENT)
    results = []
    try:
        for n in [int(x) for x in a.adapters.split(",")]:
            r = run_scale(kube, n, a.clients, audit, a.sidecar_reloads, restart=not a.no_restart)
            results.append(r)
            print(json.dumps(asdict(r)), flush=True)
        print(report(results))
    finally:
        kube.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
