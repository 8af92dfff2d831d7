"""Is this hub repo a LoRA for our pool's base model? The pure checks live in `loraplex.hubmeta` (the worker's open
catalog uses them too); this module keeps the operator's import path."""

from loraplex.hubmeta import HubCheck, check_hub_metadata, declared_base_models, pick_weights

__all__ = ["HubCheck", "check_hub_metadata", "declared_base_models", "pick_weights"]
