"""Which model family (SDXL or FLUX) a base model id belongs to, for the hub checks. Pure.

The worker reads the family from the model itself (its config); the operator, which never loads a model, knows the
published base ids, so a hub LoRA whose card names a base of the other family is refused before any pod fetches it,
and a pool's declared `spec.model.pipeline` (or `auto`) resolves to a family where it can.
"""

from __future__ import annotations


def normalize_model(name: str) -> str:
    """A hub model id compared case-insensitively, without stray slashes or spaces."""
    return name.strip().strip("/").lower()


SDXL, FLUX = "sdxl", "flux"
LABELS = {SDXL: "SDXL", FLUX: "FLUX"}

# Published base models by family (normalized ids). FLUX.1 [dev], [schnell] and their same-shape derivatives
# share one transformer architecture: a LoRA trained on one loads on the others (quality aside).
FLUX1_BASES = frozenset(
    {
        "black-forest-labs/flux.1-dev",
        "black-forest-labs/flux.1-schnell",
        "black-forest-labs/flux.1-krea-dev",
    }
)
KNOWN_BASES: dict[str, str] = {
    "stabilityai/stable-diffusion-xl-base-1.0": SDXL,
    "stabilityai/sdxl-turbo": SDXL,
    "stabilityai/stable-diffusion-xl-refiner-1.0": SDXL,
    "tiny": SDXL,
    "drawing": SDXL,
    "tiny-flux": FLUX,
    **dict.fromkeys(FLUX1_BASES, FLUX),
}


def family_of_model(name: str) -> str | None:
    """The family of a base model id when it is a known one; None otherwise (the worker reads the model)."""
    return KNOWN_BASES.get(normalize_model(name))


def pool_family(model_name: str, pipeline: str) -> str | None:
    """A pool's family: the declared `spec.model.pipeline`, or for `auto` the family of a known base id."""
    return pipeline if pipeline in LABELS else family_of_model(model_name)


def interchangeable(a: str, b: str) -> bool:
    """Whether a LoRA declared for base `a` loads on base `b`: the same id, or two FLUX.1 variants."""
    a, b = normalize_model(a), normalize_model(b)
    return a == b or (a in FLUX1_BASES and b in FLUX1_BASES)
