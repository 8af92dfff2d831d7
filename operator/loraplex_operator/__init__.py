"""loraplex control plane: the kopf operator for BaseModelPool and LoraAdapter."""
