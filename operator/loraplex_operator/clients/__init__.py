"""The operator's clients of other services: `kube` (REST verbs, server-side apply), `hub` (model metadata) and
`sidecars` (the sidecars' /v1/stats, polled by the autoscaler)."""
