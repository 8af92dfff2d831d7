"""The operator's pure functions: no I/O, every one unit-tested.

`specs` parses CRs into typed specs; `manifests` builds Deployment/Service/PDB/RBAC from a spec; `podstate`,
`poolstatus` and `conditions` compute status; `resolution` finds an adapter's pool and settles name conflicts;
`hubmeta` judges a hub repo's metadata; `routes` builds the routing table and `shards` splits it into ConfigMaps;
`sizing` decides replicas; `stats` parses and sums the sidecars' /v1/stats; `backoff` the retry delays.
"""
