"""The operator's I/O: reconcilers, the table writer, the autoscaler, leader election and the kopf wiring.

`pool_controller` and `adapter_controller` run one idempotent reconcile per kind; `table_writer` rebuilds a namespace's
routing table and writes only changed shards; `autoscaler` polls the sidecars' stats and writes the scale
subresource; `leader` holds the Lease; `health` serves /healthz; `check` is `--check`; `handlers` and `app` connect
all of it to kopf. Decisions are made by the pure functions in `loraplex_operator.logic`.
"""
