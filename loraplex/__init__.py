"""loraplex: the contract shared by the data plane (`inference_pod`) and the operator (`loraplex_operator`).

`loraplex.api` holds what both sides read and write (the routing table schema, the ConfigMap names,
the internal headers, the error body); `loraplex.cli` is the one `loraplex` command; `loraplex.logs` the one
logging set-up. Nothing here imports either side at module level.
"""
