"""loraplex control plane: the kopf operator for BaseModelPool and LoraAdapter.

`logic` holds the pure decisions, `controllers` the I/O that acts on them, `clients` the Kubernetes and hub
clients. The contract with the data plane is `loraplex.api`; this package never imports `inference_pod`.
"""
