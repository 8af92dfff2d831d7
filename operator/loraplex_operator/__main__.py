"""`python -m loraplex_operator` / `loraplex operator`: run the operator.

    python -m loraplex_operator [--namespace NS ...] [--health-port 8080]
        [--no-leader-election | --lease-namespace NS --lease-name NAME --identity ID]
    python -m loraplex_operator --check [--lease-namespace NS --lease-name NAME]

Environment defaults (the chart sets these): LORAPLEX_WATCH_NAMESPACES
(comma-separated; empty = cluster-wide), LORAPLEX_LEASE_NAMESPACE (else
POD_NAMESPACE), POD_NAME (identity), LORAPLEX_LOG_LEVEL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence

from loraplex.identity import ensure_user_name
from loraplex.logs import setup_logging
from loraplex_operator.clients.kube import Kube
from loraplex_operator.controllers.app import Operator, OperatorConfig
from loraplex_operator.controllers.check import run_check


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    d = OperatorConfig()  # the defaults are the config's; the environment (the chart) overrides some
    p = argparse.ArgumentParser(
        prog="loraplex operator", description="Run the loraplex Kubernetes operator (BaseModelPool, LoraAdapter)."
    )
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        dest="namespaces",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    p.add_argument("--health-host", default=d.health_host)
    p.add_argument(
        "--health-port",
        type=int,
        default=int(env("LORAPLEX_HEALTH_PORT", str(d.health_port))),
        help="liveness endpoint port (GET /healthz)",
    )
    p.add_argument(
        "--no-leader-election",
        dest="leader_election",
        action="store_false",
        help="run without a Lease (one replica only)",
    )
    p.add_argument(
        "--lease-namespace", default=env("LORAPLEX_LEASE_NAMESPACE") or env("POD_NAMESPACE") or d.lease_namespace
    )
    p.add_argument("--lease-name", default=env("LORAPLEX_LEASE_NAME", d.lease_name))
    p.add_argument(
        "--identity",
        default=env("LORAPLEX_IDENTITY", d.identity),
        help="leader-election identity (default: $POD_NAME, else host-pid)",
    )
    p.add_argument("--resync-seconds", type=float, default=d.resync_s)
    p.add_argument("--stats-timeout", type=float, default=d.stats_timeout_s, help="seconds per sidecar /v1/stats call")
    p.add_argument(
        "--stats-port",
        type=int,
        default=d.stats_port,
        help="port of the pods' sidecars whose /v1/stats the autoscaler polls (the chart's pods use the default)",
    )
    p.add_argument("--hub-timeout", type=float, default=d.hub_timeout_s, help="seconds per hub metadata call")
    p.add_argument("--debounce", type=float, default=d.debounce_s, help="routing table: quiet time before a write")
    p.add_argument("--max-delay", type=float, default=d.max_delay_s, help="routing table: longest wait before a write")
    p.add_argument("--log-level", default=None, help="default: $LORAPLEX_LOG_LEVEL, else INFO")
    p.add_argument(
        "--check",
        action="store_true",
        help="do not run: check that the CRDs are served and a leader holds the lease (helm test)",
    )
    return p


def _expected_retries_are_info(record: logging.LogRecord) -> bool:
    """kopf logs a handler's TemporaryError at ERROR; for us it is an expected state (PoolNotFound,
    HubUnreachable, ...) already in the object's status: show it as INFO, keep real errors at ERROR."""
    if record.levelno == logging.ERROR and "failed temporarily" in record.getMessage():
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ensure_user_name()  # kopf's peering identity calls getpass.getuser()
    level = setup_logging(args.log_level)
    # kopf logs every handler run at INFO; with thousands of adapters that drowns the useful lines.
    logging.getLogger("kopf").setLevel(max(logging.WARNING, level))
    logging.getLogger("kopf.objects").addFilter(_expected_retries_are_info)
    if args.check:
        return run_check(Kube(workers=1), args.lease_namespace, args.lease_name, args.leader_election, time.time())
    namespaces = args.namespaces
    if namespaces is None:
        namespaces = [n.strip() for n in os.environ.get("LORAPLEX_WATCH_NAMESPACES", "").split(",") if n.strip()]
    cfg = OperatorConfig(
        namespaces=namespaces,
        health_host=args.health_host,
        health_port=args.health_port,
        leader_election=args.leader_election,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        identity=args.identity,
        resync_s=args.resync_seconds,
        stats_timeout_s=args.stats_timeout,
        stats_port=args.stats_port,
        hub_timeout_s=args.hub_timeout,
        debounce_s=args.debounce,
        max_delay_s=args.max_delay,
    )
    return asyncio.run(_run(cfg))


async def _run(cfg: OperatorConfig) -> int:
    return await Operator(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
