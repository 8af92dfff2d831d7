"""The operator's clients of other services: `kube` (REST verbs, server-side apply) and `hub` (model metadata)."""
