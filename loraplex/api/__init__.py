"""The wire contract between the operator and the inference pods, and between pods.

Only these modules define the routing table document (`routing_table`), the names of the ConfigMaps that carry it
(`names`), the X-Loraplex-* headers (`headers`) and the error body every HTTP answer uses (`errors`). The operator
writes what the sidecars read, so both import it from here and nothing else defines it again; this package imports
neither `inference_pod` nor `loraplex_operator`.
"""
