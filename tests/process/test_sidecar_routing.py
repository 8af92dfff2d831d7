"""Router sidecars as real processes on loopback, in front of real HTTP echo peers.

Three "pods" (an echo server standing in for the worker + a sidecar each),
a gateway sidecar (no worker) and a gateway with bearer auth, all reading one
routing table file. The echo peers report what reached them, so each test
sees exactly which pod served a request and with which headers.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inference_pod.router.placement import home_endpoints
from loraplex.api.hopauth import HopKeys, write_random_key_file
from tests.helpers.httpclient import Reply, get, post
from tests.helpers.procs import PYTHON, REPO_ROOT, ProcHandle, free_port, loopback_server_cmd, start_process

POD_NAMES = ["pod-0", "pod-1", "pod-2"]
ADAPTERS = [f"a{i}" for i in range(20)]
TOKEN = "s3cret-token"
ECHO = str(REPO_ROOT / "tests" / "helpers" / "echo_server.py")


def home(adapter: str, pods: list[str] = POD_NAMES) -> str:
    return home_endpoints(adapter, pods, 1)[0]


@dataclass
class Stack:
    tmp: Path
    table_path: Path
    echoes: dict[str, ProcHandle] = field(default_factory=dict)
    sidecars: dict[str, ProcHandle] = field(default_factory=dict)
    generation: int = 0

    def doc(
        self,
        endpoints: list[str] | None = None,
        extra_adapters: dict | None = None,
        cold_endpoints: list[str] | None = None,
    ) -> dict:
        eps = POD_NAMES if endpoints is None else endpoints
        adapters = {
            a: {"pool": "tiny", "source": {"type": "path", "path": f"/adapters/{a}.safetensors"}} for a in ADAPTERS
        }
        adapters["a0"]["aliases"] = ["alias-a0"]
        adapters["a1"]["replication"] = 2
        adapters["other-pool-lora"] = {"pool": "other", "source": {"type": "hub", "repo": "acme/x"}}
        adapters["cold-lora"] = {"pool": "cold", "source": {"type": "url", "url": "https://x.test/c.safetensors"}}
        adapters.update(extra_adapters or {})
        return {
            "version": 1,
            "generation": self.generation,
            "pools": {
                "tiny": {"baseModel": "tiny", "endpoints": [{"name": n, "url": self.sidecars[n].url} for n in eps]},
                "other": {"baseModel": "other-base"},
                "cold": {
                    "baseModel": "cold-base",
                    "activationTimeoutSeconds": 20,
                    "endpoints": [{"name": n, "url": self.sidecars[n].url} for n in (cold_endpoints or [])],
                },
                "brief": {"baseModel": "brief-base", "activationTimeoutSeconds": 0.5},
            },
            "adapters": adapters,
        }

    def write_raw(self, content: str) -> None:
        tmp = self.table_path.with_suffix(".tmp")
        tmp.write_text(content)
        tmp.replace(self.table_path)  # atomic, like a ConfigMap volume update

    def write(self, **kw) -> None:
        """Write a new table generation and wait until every sidecar has it."""
        self.generation += 1
        self.write_raw(json.dumps(self.doc(**kw)))
        self.wait_generation(self.generation)

    def wait_generation(self, gen: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for name, sc in self.sidecars.items():
            while get(sc.url + "/v1/stats").json()["table"]["generation"] != gen:
                assert time.monotonic() < deadline, f"{name} did not load generation {gen}"
                time.sleep(0.1)

    def url(self, name: str) -> str:
        return self.sidecars[name].url

    def records(self, pod: str) -> list[dict]:
        return get(self.echoes[pod].url + "/records").json()


def start_sidecar(stack: Stack, name: str, *extra: str) -> ProcHandle:
    port = free_port()
    cmd = [
        *loopback_server_cmd("inference_pod.router", str(port)),
        "--table-file",
        str(stack.table_path),
        "--connect-timeout",
        "1",
        "--request-timeout",
        "30",
        "--hop-key-file",
        str(stack.tmp / "hop-key"),
        *extra,
    ]
    return start_process(cmd, port, timeout=60, log_dir=stack.tmp)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("router")
    s = Stack(tmp, tmp / "table.json")
    write_random_key_file(tmp / "hop-key")
    try:
        for n in POD_NAMES:
            port = free_port()
            s.echoes[n] = start_process([PYTHON, ECHO, "--port", str(port), "--name", n], port, log_dir=tmp)
        # The table names the sidecars' URLs, so reserve them first.
        ports = {n: free_port() for n in POD_NAMES}
        for n in POD_NAMES:
            s.sidecars[n] = ProcHandle(proc=None, port=ports[n], host="127.0.0.1", log_path=tmp, cmd=[])  # type: ignore[arg-type]
        s.write_raw(json.dumps(s.doc()))
        for n in POD_NAMES:
            cmd = [
                *loopback_server_cmd("inference_pod.router", str(ports[n])),
                "--worker-url",
                s.echoes[n].url,
                "--pod-name",
                n,
                "--table-file",
                str(s.table_path),
                "--connect-timeout",
                "1",
                "--request-timeout",
                "30",
                "--hop-key-file",
                str(tmp / "hop-key"),
            ]
            s.sidecars[n] = start_process(cmd, ports[n], timeout=60, log_dir=tmp)
        s.sidecars["gateway"] = start_sidecar(s, "gateway", "--max-body-bytes", "4096")
        (tmp / "tokens").write_text(f"# one per line\n{TOKEN}\nanother-token\n")
        s.sidecars["auth"] = start_sidecar(s, "auth", "--auth-tokens-file", str(tmp / "tokens"))
        yield s
    finally:
        for h in [*s.sidecars.values(), *s.echoes.values()]:
            if h.proc is not None:
                h.terminate()


def gen(url: str, model: str, **kw) -> Reply:
    return post(url + "/v1/generate", {"model": model, "prompt": "a cat", "seed": 1, **kw})


def served_by(r: Reply) -> str:
    assert r.status == 200, r.body
    assert r.json()["servedBy"] == r.header("X-Loraplex-Pod")
    return r.json()["servedBy"]


def test_same_adapter_same_home_from_every_sidecar(stack: Stack) -> None:
    homes = set()
    for a in ADAPTERS[:8]:
        for entry in ("pod-0", "pod-2", "gateway", "pod-0"):
            assert served_by(gen(stack.url(entry), a)) == home(a), (a, entry)
        homes.add(home(a))
    assert len(homes) > 1  # adapters spread over the pool


def test_forwarded_request_carries_body_route_and_hop(stack: Stack) -> None:
    body = {
        "model": "alias-a0",
        "prompt": "x",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 7,
        "adapters": [{"name": "a5", "scale": 0.5}],
        "extra": {"kept": [1, 2]},
    }
    r = post(stack.url("gateway") + "/v1/generate", body)
    assert served_by(r) == home("a0")  # the placement key is the model's adapter
    seen = r.json()
    assert seen["body"] == body
    h = {k.lower(): v for k, v in seen["headers"].items()}
    assert h["x-loraplex-hop"] == "gateway"
    HopKeys(stack.tmp / "hop-key").verify(  # the last hop (sidecar -> its worker) is signed too
        h["x-loraplex-hop-auth"], "POST", "/v1/generate", "gateway", h["x-loraplex-route"], seen["rawBody"].encode()
    )
    route = json.loads(h["x-loraplex-route"])
    assert route["pool"] == "tiny" and route["model"] == "a0"
    assert set(route["adapters"]) == {"a0", "a5"}
    assert route["adapters"]["a0"]["source"] == {"type": "path", "path": "/adapters/a0.safetensors"}
    assert route["adapters"]["a0"]["aliases"] == ["alias-a0"]
    assert route["names"] == {"alias-a0": "a0", "a5": "a5"}
    # Worker timing headers come back; private ones do not; the router adds its own.
    assert r.header("X-Loraplex-Inference-Ms") == "3.0" and r.header("X-Loraplex-Swap-Tier") == "echo"
    assert r.header("X-Echo-Private") is None
    assert r.header("X-Loraplex-Load") is None and r.header("X-Loraplex-Busy") is None  # between routers only
    assert float(r.header("X-Loraplex-Router-Ms")) >= 0
    assert r.header("Content-Type").startswith("application/json")


def test_base_model_and_multi_adapter_placement(stack: Stack) -> None:
    r = post(stack.url("pod-1") + "/v1/images/generations", {"model": "tiny", "prompt": "p"})
    assert r.status == 200 and r.json()["path"] == "/v1/images/generations"
    route = json.loads({k.lower(): v for k, v in r.json()["headers"].items()}["x-loraplex-route"])
    assert route == {"pool": "tiny", "model": None, "adapters": {}, "names": {}}
    r = gen(stack.url("pod-1"), "tiny", adapters=[{"name": "a7"}, {"name": "alias-a0", "scale": 1}])
    assert served_by(r) == home("a7")  # first adapter is the key
    r = gen(stack.url("pod-1"), "tiny", adapters=["a9", "a7"])  # the name-only shorthand
    assert served_by(r) == home("a9")


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (b"[1, 2]", 400, None, "invalid_body"),
        ({"prompt": "no model"}, 400, "model", "missing_field"),
        ({"model": 3}, 400, "model", "invalid_type"),
        ({"model": "nope-model"}, 404, "model", "model_not_found"),
        ({"model": "tiny", "adapters": "a1"}, 400, "adapters", "invalid_type"),
        ({"model": "tiny", "adapters": [{"scale": 1}]}, 400, "adapters[0].name", "missing_field"),
        ({"model": "tiny", "adapters": [{"name": "a1", "scale": "x"}]}, 400, "adapters[0].scale", "invalid_type"),
        (
            {"model": "tiny", "adapters": [{"name": "a1"}, {"name": "ghost"}]},
            404,
            "adapters[1].name",
            "model_not_found",
        ),
        ({"model": "tiny", "adapters": [{"name": "other-pool-lora"}]}, 400, "adapters[0].name", "pool_mismatch"),
        ({"model": "tiny", "adapters": [{"name": "tiny"}]}, 400, "adapters[0].name", "not_an_adapter"),
        ({"model": "other-pool-lora"}, 503, None, "no_ready_endpoint"),
        ({"model": "x" * 5000}, 413, None, "body_too_large"),
    ],
)
def test_bad_requests(stack: Stack, body, status: int, param, code: str) -> None:
    r = post(stack.url("gateway") + "/v1/generate", body)
    assert r.status == status, r.body
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["param"], err["code"]) == (param, code)
    if code == "model_not_found":
        assert ("nope-model" in err["message"]) or ("ghost" in err["message"])
    assert not any(stack.records(p) and stack.records(p)[-1]["body"] == body for p in POD_NAMES)


def test_unknown_route_and_method_are_json(stack: Stack) -> None:
    r = get(stack.url("pod-0") + "/v1/nothing")
    assert r.status == 404 and r.json()["error"]["code"] == "not_found"
    r = get(stack.url("pod-0") + "/v1/generate")
    assert r.status == 405 and "error" in r.json()


def signed_hop(
    stack: Stack, body: dict, hop: str, to: str, route: str = "", key_file: str = "hop-key"
) -> dict[str, str]:
    """The headers of a hop from `hop` to pod `to` ('' for a router with no pod name, the gateway)."""
    raw = json.dumps(body).encode()
    headers = {"X-Loraplex-Hop": hop}
    if route:
        headers["X-Loraplex-Route"] = route
    keys = HopKeys(stack.tmp / key_file)
    headers["X-Loraplex-Hop-Auth"] = keys.sign("POST", "/v1/generate", hop, route, raw, to=to)
    return headers


def test_hop_header_is_served_locally_never_forwarded(stack: Stack) -> None:
    a = next(a for a in ADAPTERS if home(a) != "pod-0")
    r = gen(stack.url("pod-0"), a)
    assert served_by(r) == home(a)
    body = {"model": a}
    r = post(stack.url("pod-0") + "/v1/generate", body, headers=signed_hop(stack, body, "pod-9", "pod-0"))
    assert served_by(r) == "pod-0"
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert seen["x-loraplex-hop"] == "pod-9"
    assert json.loads(seen["x-loraplex-route"])["model"] == a  # filled in from pod-0's own table
    # A gateway has no local worker: a routed request stops there.
    r = post(stack.url("gateway") + "/v1/generate", body, headers=signed_hop(stack, body, "pod-9", ""))
    assert r.status == 502 and r.json()["error"]["code"] == "loop_detected"


EVIL_ROUTE = json.dumps(
    {
        "pool": "tiny",
        "model": "a1",
        "adapters": {"a1": {"pool": "tiny", "source": {"type": "url", "url": "http://169.254.169.254/latest"}}},
        "names": {"a1": "a1"},
    }
)


def test_a_hop_signed_for_one_pod_is_refused_by_every_other(stack: Stack) -> None:
    """Before: a hop named no receiver, so one captured on its way to pod-0 was accepted once by each other pod."""
    body = {"model": next(a for a in ADAPTERS if home(a) == "pod-1")}
    before = {n: len(stack.records(n)) for n in POD_NAMES}
    meant_for_pod_0 = signed_hop(stack, body, "pod-9", "pod-0")
    for entry, to in (("pod-1", "pod-0"), ("gateway", "pod-0"), ("pod-0", "pod-1")):
        headers = meant_for_pod_0 if to == "pod-0" else signed_hop(stack, body, "pod-9", to)
        r = post(stack.url(entry) + "/v1/generate", body, headers=headers)
        assert r.status == 401 and r.json()["error"]["code"] == "invalid_hop_signature", (entry, r.body)
        assert f"signed for pod '{to}'" in r.json()["error"]["message"]
    # The receiver is signed: rewriting `to=` breaks the signature.
    forged = meant_for_pod_0["X-Loraplex-Hop-Auth"].replace("to=pod-0", "to=pod-1")
    r = post(stack.url("pod-1") + "/v1/generate", body, headers={**meant_for_pod_0, "X-Loraplex-Hop-Auth": forged})
    assert r.status == 401 and "bad X-Loraplex-Hop-Auth signature" in r.json()["error"]["message"]
    assert {n: len(stack.records(n)) for n in POD_NAMES} == before
    # The pod it was meant for serves it, once.
    r = post(stack.url("pod-0") + "/v1/generate", body, headers=meant_for_pod_0)
    assert served_by(r) == "pod-0"


def test_client_cannot_inject_internal_headers(stack: Stack) -> None:
    """Issue #10: a client-sent hop/route was trusted and its adapter sources reached the worker."""
    body = {"model": "a1"}
    before = {n: len(stack.records(n)) for n in POD_NAMES}
    for entry in ("pod-0", "pod-1", "gateway"):
        # An unsigned hop, with or without a route naming another source: refused, nothing forwarded.
        for headers in (
            {"X-Loraplex-Hop": "pod-9"},
            {"X-Loraplex-Hop": "pod-9", "X-Loraplex-Route": EVIL_ROUTE},
            {"X-Loraplex-Hop": "pod-9", "X-Loraplex-Route": EVIL_ROUTE, "X-Loraplex-Hop-Auth": "v1 ts=1 sig=00"},
        ):
            r = post(stack.url(entry) + "/v1/generate", body, headers=headers)
            assert r.status == 401 and r.json()["error"]["code"] == "invalid_hop_signature", (entry, r.body)
    # A hop signed with the right key but a swapped route (or body) fails the signature.
    good = signed_hop(stack, body, "pod-9", "pod-0")
    r = post(stack.url("pod-0") + "/v1/generate", body, headers={**good, "X-Loraplex-Route": EVIL_ROUTE})
    assert r.status == 401
    r = post(stack.url("pod-0") + "/v1/generate", {"model": "a2"}, headers=good)
    assert r.status == 401
    # A hop signed with another key: refused.
    write_random_key_file(stack.tmp / "other-key")
    r = post(
        stack.url("pod-0") + "/v1/generate",
        body,
        headers=signed_hop(stack, body, "pod-9", "pod-0", key_file="other-key"),
    )
    assert r.status == 401
    assert {n: len(stack.records(n)) for n in POD_NAMES} == before
    # Without a hop, a client's route (or any internal header) is dropped at the edge: the table's route is used.
    r = post(
        stack.url("pod-0") + "/v1/generate",
        {"model": "a1", "prompt": "x"},
        headers={"X-Loraplex-Route": EVIL_ROUTE, "X-Loraplex-Hop-Auth": "v1 ts=1 sig=00", "X-Loraplex-If-Idle": "1"},
    )
    served_by(r)
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert json.loads(seen["x-loraplex-route"])["adapters"]["a1"]["source"]["type"] == "path"
    assert seen["x-loraplex-hop-auth"] != "v1 ts=1 sig=00"
    assert "x-loraplex-if-idle" not in seen


def test_idle_probe_flag_counts_only_when_signed_for_its_hop(stack: Stack) -> None:
    """A busy pod refuses a peer's signed idle probe at once; any other X-Loraplex-If-Idle is ignored."""
    a = next(a for a in ADAPTERS if home(a) == "pod-1")
    body = {"model": a, "prompt": "x"}
    keys = HopKeys(stack.tmp / "hop-key")
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        busy = ex.submit(gen, stack.url("pod-1"), a, echo={"delay": 3.0})
        deadline = time.monotonic() + 10
        while get(stack.url("pod-1") + "/v1/load").json()["load"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        hop = signed_hop(stack, body, "pod-9", "pod-1")
        flag = keys.sign_flag("X-Loraplex-If-Idle", hop["X-Loraplex-Hop-Auth"])
        t0 = time.monotonic()
        r = post(stack.url("pod-1") + "/v1/generate", body, headers={**hop, "X-Loraplex-If-Idle": flag})
        assert r.status == 429 and r.json()["error"]["code"] == "busy" and time.monotonic() - t0 < 1.5
        assert r.header("X-Loraplex-Busy") == "1" and r.header("X-Loraplex-Load").split()[0] == "1"
        # Unsigned, or signed for another hop: served as a plain hop (after the busy one), not passed to the worker.
        for value in ("1", flag):  # `flag` belongs to the hop above, not to this fresh one
            fresh = signed_hop(stack, body, "pod-9", "pod-1")  # each signature is accepted once (replay cache)
            r = post(stack.url("pod-1") + "/v1/generate", body, headers={**fresh, "X-Loraplex-If-Idle": value})
            assert served_by(r) == "pod-1"
            assert "x-loraplex-if-idle" not in {k.lower() for k in r.json()["headers"]}
        assert served_by(busy.result()) == "pod-1"
    load = get(stack.url("pod-1") + "/v1/load").json()
    assert (load["pod"], load["load"]) == ("pod-1", 0) and load["version"] > 0


def test_auth(stack: Stack) -> None:
    url = stack.url("auth")
    r = gen(url, "a3")
    assert r.status == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.header("WWW-Authenticate").startswith("Bearer")
    assert post(url + "/v1/generate", {"model": "a3"}, {"Authorization": "Bearer wrong"}).status == 401
    assert post(url + "/v1/generate", {"model": "a3"}, {"Authorization": TOKEN}).status == 401
    assert get(url + "/v1/models").status == 401
    r = post(url + "/v1/generate", {"model": "a3"}, {"Authorization": f"Bearer {TOKEN}"})
    assert served_by(r) == home("a3")
    assert get(url + "/v1/models", {"Authorization": "Bearer another-token"}).status == 200
    for path in ("/v1/stats", "/v1/load", "/metrics", "/healthz", "/readyz"):
        assert get(url + path).status == 200, path


def test_models_stats_metrics(stack: Stack) -> None:
    models = get(stack.url("pod-0") + "/v1/models").json()
    assert models["object"] == "list"
    ids = {m["id"]: m for m in models["data"]}
    assert {"tiny", "a0", "alias-a0", "a19", "cold-lora"} <= set(ids)
    assert ids["alias-a0"]["adapter"] == "a0" and ids["tiny"]["adapter"] is None
    a = next(a for a in ADAPTERS if home(a) == "pod-1")
    for _ in range(3):
        assert served_by(gen(stack.url("pod-2"), a)) == "pod-1"
    entry = get(stack.url("pod-2") + "/v1/stats").json()
    assert entry["pod"] == "pod-2" and entry["mode"] == "pod" and entry["table"]["loaded"]
    assert entry["adapters"][a]["requests"] >= 3 and entry["adapters"][a]["requestRate"] > 0
    assert entry["adapters"][a]["lastRequestTime"] > time.time() - 60
    pool = entry["pools"]["tiny"]
    assert pool["requests"] >= 3 and pool["inFlight"] == 0 and pool["requestRate"] > 0
    assert pool["meanServiceSeconds"] == pytest.approx(0.005)  # echo's swap 2 ms + inference 3 ms
    served = get(stack.url("pod-1") + "/v1/stats").json()
    assert served["pools"]["tiny"]["served"] >= 3  # counted as served where it ran, not as a request
    assert a not in served["adapters"] or served["adapters"][a]["requests"] < entry["adapters"][a]["requests"]
    text = get(stack.url("pod-2") + "/metrics").body.decode()
    assert 'loraplex_router_requests_total{code="200",pool="tiny"}' in text
    assert "loraplex_router_table_generation" in text
    # Ready; the echo worker serves no /metrics, so the sidecar says its part was left out.
    assert "\nloraplex_router_ready 1.0\n" in text and "\nloraplex_router_worker_metrics_up 0.0\n" in text
    assert "loraplex_worker_" not in text


def test_retry_on_retryable_status_only(stack: Stack) -> None:
    a = ADAPTERS[4]
    h = home(a)
    for status in (503, 502, 429):
        r = gen(stack.url("gateway"), a, echo={"status": status, "failOn": [h]})
        assert served_by(r) != h and r.header("X-Loraplex-Attempts") == "2"
    for status in (500, 504, 400):
        r = gen(stack.url("gateway"), a, echo={"status": status, "failOn": [h]})
        assert r.status == status and r.json()["servedBy"] == h and r.header("X-Loraplex-Attempts") == "1"
    # Everybody answers 503: the last answer is passed through after max attempts (4, idle probes included).
    r = gen(stack.url("gateway"), a, echo={"status": 503})
    assert r.status == 503 and r.header("X-Loraplex-Attempts") == "4"


def test_load_spills_from_a_busy_home(stack: Stack) -> None:
    a = ADAPTERS[6]
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        replies = list(ex.map(lambda _: gen(stack.url("pod-0"), a, echo={"delay": 1.5}), range(6)))
    pods = [served_by(r) for r in replies]
    assert pods.count(home(a)) >= 2 and len(set(pods)) == 3, pods


def test_replicated_adapter_uses_both_homes_under_load(stack: Stack) -> None:
    homes = home_endpoints("a1", POD_NAMES, 2)
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        replies = list(ex.map(lambda _: gen(stack.url("gateway"), "a1", echo={"delay": 1.0}), range(2)))
    assert sorted(served_by(r) for r in replies) == sorted(homes)


def test_hot_reload_and_malformed_update(stack: Stack) -> None:
    assert gen(stack.url("pod-0"), "fresh-lora").status == 404
    stack.write(extra_adapters={"fresh-lora": {"pool": "tiny", "source": {"type": "path", "path": "/f"}}})
    for name in ("pod-0", "pod-1", "gateway"):
        assert served_by(gen(stack.url(name), "fresh-lora")) == home("fresh-lora")
    errors = get(stack.url("pod-0") + "/v1/stats").json()["table"]["reloadErrors"]
    stack.write_raw('{"version": 1, "pools": {"tiny": ')  # truncated write
    deadline = time.monotonic() + 10
    while get(stack.url("pod-0") + "/v1/stats").json()["table"]["reloadErrors"] == errors:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert served_by(gen(stack.url("pod-0"), "fresh-lora")) == home("fresh-lora")  # last good table
    assert get(stack.url("pod-0") + "/readyz").status == 200
    stack.write()  # back to a good table without the new adapter
    assert gen(stack.url("pod-0"), "fresh-lora").status == 404


def test_removed_endpoint_moves_only_its_adapters(stack: Stack) -> None:
    try:
        stack.write(endpoints=["pod-0", "pod-1"])
        for a in ADAPTERS:
            expected = home(a, ["pod-0", "pod-1"])
            assert served_by(gen(stack.url("gateway"), a)) == expected
            if home(a) != "pod-2":
                assert expected == home(a)  # unaffected adapters keep their home
    finally:
        stack.write()


def test_activator_holds_until_a_pod_is_ready(stack: Stack) -> None:
    t0 = time.monotonic()
    r = gen(stack.url("gateway"), "brief-base")
    assert r.status == 503 and r.json()["error"]["code"] == "no_ready_endpoint"
    assert 0.4 < time.monotonic() - t0 < 5
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(gen, stack.url("gateway"), "cold-lora")
        deadline = time.monotonic() + 10
        while get(stack.url("gateway") + "/v1/stats").json()["pools"].get("cold", {}).get("waiting", 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert not fut.done()
        try:
            stack.write(cold_endpoints=["pod-2"])
            assert served_by(fut.result(timeout=20)) == "pod-2"
        finally:
            stack.write()
    assert get(stack.url("gateway") + "/v1/stats").json()["pools"]["cold"]["waiting"] == 0


def test_a_pod_serves_its_pool_itself_when_the_table_names_no_ready_endpoint(stack: Stack) -> None:
    """The table drops every endpoint of `tiny` (e.g. Kubernetes marked the node's pods NotReady when the
    API came back): a pod whose worker is ready and that the table once listed still serves its own
    requests; the gateway (no worker) still says 503 no_ready_endpoint."""
    a = next(a for a in ADAPTERS if home(a) == "pod-1")
    try:
        stack.write(endpoints=[])
        for pod in ("pod-0", "pod-2"):
            r = gen(stack.url(pod), a)
            assert served_by(r) == pod, r.body
        metrics = get(stack.url("pod-0") + "/metrics").body.decode()
        assert 'loraplex_router_served_without_table_endpoint_total{pool="tiny"}' in metrics
        r = gen(stack.url("gateway"), a)
        assert r.status == 503 and r.json()["error"]["code"] == "no_ready_endpoint"
        # A pool that never listed the pod ("brief"): no fallback either.
        r = gen(stack.url("pod-0"), "brief-base")
        assert r.status == 503 and r.json()["error"]["code"] == "no_ready_endpoint"
    finally:
        stack.write()
    assert served_by(gen(stack.url("pod-0"), a)) == "pod-1"  # the table rules again


def test_killed_worker_makes_the_router_retry_elsewhere(stack: Stack) -> None:
    # Destructive: runs last in this module (pytest keeps file order).
    victim = "pod-1"
    a = next(a for a in ADAPTERS if home(a) == victim)
    stack.echoes[victim].kill()
    for entry in ("pod-0", "gateway", victim):
        r = gen(stack.url(entry), a)
        assert served_by(r) != victim and r.header("X-Loraplex-Attempts") == "2", entry
    assert get(stack.url(victim) + "/readyz").status == 503
    # A whole pod gone (its sidecar too): connection refused, next candidate.
    stack.sidecars[victim].kill()
    r = gen(stack.url("pod-0"), a)
    assert served_by(r) != victim and r.header("X-Loraplex-Attempts") == "2"
