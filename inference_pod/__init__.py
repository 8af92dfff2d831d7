"""loraplex data plane: the diffusion worker and the router sidecar of an inference pod.

`router` is the sidecar (the pod's only port), `worker` the process that owns the GPU and the pipeline,
`adapters` where adapter bytes come from and which tier holds them, `slots` the slot engine that applies them,
`local` the demo stack and the LoRA factory. The contract with the operator is `loraplex.api`; this package never
imports `loraplex_operator`.
"""
