"""Which model family (SDXL or FLUX) a base model id belongs to. The pure table lives in `loraplex.families` (the
hub checks the worker shares use it too); this module keeps the operator's import path."""

from loraplex.families import (
    FLUX,
    FLUX1_BASES,
    KNOWN_BASES,
    LABELS,
    SDXL,
    family_of_model,
    interchangeable,
    pool_family,
)

__all__ = ["FLUX", "FLUX1_BASES", "KNOWN_BASES", "LABELS", "SDXL", "family_of_model", "interchangeable", "pool_family"]
