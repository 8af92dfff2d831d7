"""The names under which the operator publishes the routing table and the sidecars find it.

The operator writes ConfigMaps `loraplex-routes-<i>` labelled `loraplex.io/routing-table=true`, each holding one
shard of the table (a `loraplex.api.routing_table` document) under the data key `table.json`; the sidecars watch
ConfigMaps with that label and join the shards.
"""

from __future__ import annotations

LABEL_ROUTING_TABLE = "loraplex.io/routing-table"
TABLE_LABEL_SELECTOR = f"{LABEL_ROUTING_TABLE}=true"
TABLE_CONFIGMAP_PREFIX = "loraplex-routes"
TABLE_DATA_KEY = "table.json"
# Set (to "true") by the operator on the one shard it writes when a namespace really has no pool left: a sidecar
# accepts a drop from a non-empty table to an empty one only with this marker (deleted or emptied shards are refused).
ANNOTATION_TABLE_EMPTY = "loraplex.io/table-empty"
