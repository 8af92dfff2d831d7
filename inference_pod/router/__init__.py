"""The router sidecar: the only port an inference pod exposes.

It holds the routing table (from ConfigMaps or a file: `table_source`), resolves a request to a pool and adapter
(`request`), picks home pods by rendezvous hashing (`placement`), forwards to its own worker or a peer sidecar and
retries the next candidate when one is gone (`forwarding`), counts requests for the autoscaler (`stats`) and checks
bearer tokens (`auth`). `sidecar` is the aiohttp server that wires them together; it also runs alone as the gateway.
"""
