"""Names shared by the operator, its manifests, the chart and the tests.

One place for the API group, resource names, labels and annotation keys so
that a rename cannot leave a manifest builder and a watcher disagreeing.
"""

from __future__ import annotations

# The routing table's ConfigMap names are the data plane's contract too: defined in loraplex.api.names.
from loraplex.api.names import ANNOTATION_TABLE_EMPTY, LABEL_ROUTING_TABLE, TABLE_CONFIGMAP_PREFIX, TABLE_DATA_KEY

__all__ = ["ANNOTATION_TABLE_EMPTY", "LABEL_ROUTING_TABLE", "TABLE_CONFIGMAP_PREFIX", "TABLE_DATA_KEY"]

GROUP = "loraplex.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

POOL_KIND = "BaseModelPool"
POOL_PLURAL = "basemodelpools"
ADAPTER_KIND = "LoraAdapter"
ADAPTER_PLURAL = "loraadapters"

DEFAULT_INFERENCE_IMAGE = "ghcr.io/loraplex/inference:0.1.0"
DEFAULT_OPERATOR_IMAGE = "ghcr.io/loraplex/operator:0.1.0"

# The field manager for server-side apply: the operator owns exactly the fields
# it writes, so a user's extra labels or an HPA's replicas are not fought over.
FIELD_MANAGER = "loraplex-operator"

# kopf keeps its handler progress and diff base in annotations under this
# prefix (never in .status, which belongs to the operator's own contract).
KOPF_ANNOTATION_PREFIX = "operator.loraplex.io"

# kopf's diff base annotation (under the prefix above), on pools: adapters have no kopf change handler.
KOPF_DIFFBASE_KEY = "last-handled-configuration"

# Labels on everything the operator creates.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "loraplex-operator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_POOL = "loraplex.io/pool"
# Pods whose sidecar serves /v1/stats for the autoscaler (pool pods, gateway).
LABEL_STATS = "loraplex.io/stats"

# Routing table shards.
LABEL_SHARD = "loraplex.io/shard"
# On each object a pool owns: the sha256 of the manifest the operator last applied. A restarted operator
# reads it instead of re-applying every child (no write when the live object is what it would write).
ANNOTATION_APPLIED = "loraplex.io/applied-sha256"
ANNOTATION_SHARDS = "loraplex.io/shards"
ANNOTATION_SHARD_HASH = "loraplex.io/shard-sha256"

# Ports and paths of the inference pod (sidecar is the only exposed port).
SIDECAR_PORT = 8080
WORKER_PORT = 8081
STATS_PATH = "/v1/stats"
MODEL_CACHE_DIR = "/models"
DISK_CACHE_DIR = "/var/cache/loraplex"

# Non-root identity baked into both images (docker/).
RUN_AS_USER = 10001

# Hops between sidecars (and a sidecar's requests to its worker) are signed with this namespace's key
# (loraplex/api/hopauth.py). One Secret per namespace, created once by the operator and never rewritten,
# because the gateway forwards to every pool of its namespace with one key.
HOP_KEY_SECRET = "loraplex-hop-key"
HOP_KEY_DATA_KEY = "hop-key"
HOP_KEY_DIR = "/etc/loraplex/hop-key"
ADAPTER_CA_DIR = "/etc/loraplex/adapter-ca"  # the pool's adapterSources.caBundle, worker container only
ADAPTER_CA_FILE = "ca.crt"
