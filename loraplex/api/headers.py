"""The X-Loraplex-* headers: internal ones between sidecars and workers, and the timings returned to clients.

Internal (never accepted from or shown to a client at the public edge):
- `HOP`: set by a sidecar that forwards to a peer; a request carrying it is served locally, never forwarded again.
- `ROUTE`: compact JSON of the adapter entries a request uses, so the worker needs no routing table of its own.
- `HOP_AUTH`: the HMAC that authenticates a hop (see `loraplex.api.hopauth`); without a valid one, HOP and ROUTE
  are refused (401). Every other X-Loraplex-* request header from a client is dropped at the public edge.
- `IF_IDLE`: on a hop, "serve this only if your worker is idle" (an idle probe); its value is an HMAC bound to the
  hop's signature (`HopKeys.sign_flag`). A busy pod answers 429 at once with `BUSY`, and the router asks the next
  candidate. Honoured only on an authenticated hop: a client's is ignored and never forwarded.

Internal response headers, between routers (dropped before an answer reaches a client):
- `LOAD`: "<requests at the answering pod's worker> <version>" when it answered (the routers' shared in-flight
  view; the version orders one pod's reports);
- `BUSY`: marks a refused idle probe.

Returned to the client: queue, fetch (adapter bytes from disk or source, before the job), swap and inference times
from the worker, the pod that served the request, the
router's own time and the number of attempts from the sidecar, the seed to reproduce an image.
"""

from __future__ import annotations

PREFIX = "X-Loraplex-"

HOP = "X-Loraplex-Hop"
ROUTE = "X-Loraplex-Route"
HOP_AUTH = "X-Loraplex-Hop-Auth"
IF_IDLE = "X-Loraplex-If-Idle"
INTERNAL_REQUEST = (HOP, ROUTE, HOP_AUTH, IF_IDLE)

LOAD = "X-Loraplex-Load"
BUSY = "X-Loraplex-Busy"
INTERNAL_RESPONSE = (LOAD, BUSY)

POD = "X-Loraplex-Pod"
ROUTER_MS = "X-Loraplex-Router-Ms"
ATTEMPTS = "X-Loraplex-Attempts"

QUEUE_MS = "X-Loraplex-Queue-Ms"
SWAP_TIER = "X-Loraplex-Swap-Tier"
SWAP_MS = "X-Loraplex-Swap-Ms"
FETCH_MS = "X-Loraplex-Fetch-Ms"
INFERENCE_MS = "X-Loraplex-Inference-Ms"
SEED = "X-Loraplex-Seed"
ADAPTERS = "X-Loraplex-Adapters"
