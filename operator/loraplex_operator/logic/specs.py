"""Typed views of the BaseModelPool and LoraAdapter specs.

The CRD schema (crds/) is the source of truth for validation and defaults;
these models mirror its defaults so pure code can be handed a partial spec
(a unit test, an object written before a default was added) and still see
every field. `tests/unit/test_operator_specs.py` fails if the two drift.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from loraplex.api.open_catalog import OpenCatalogPolicy
from loraplex_operator.constants import DEFAULT_INFERENCE_IMAGE


class SpecError(ValueError):
    """A spec the operator cannot act on; the message names the field."""


class _Spec(BaseModel):
    # extra="ignore": the apiserver prunes unknown fields already, and an older
    # operator must not choke on a field a newer CRD added.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class ModelRef(_Spec):
    name: str = Field(min_length=1)
    revision: str = "main"
    pipeline: Literal["auto", "sdxl", "flux"] = "auto"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"


class Autoscaling(_Spec):
    enabled: bool = True
    target_utilization: float = Field(default=0.7, gt=0.0, le=1.0)
    scale_up_stabilization_seconds: int = Field(default=0, ge=0)
    scale_down_stabilization_seconds: int = Field(default=300, ge=0)
    idle_to_zero_seconds: int = Field(default=900, ge=0)
    poll_interval_seconds: int = Field(default=15, ge=1)


class Gpu(_Spec):
    resource_name: str = "nvidia.com/gpu"
    count: int = Field(default=1, ge=0)


class Resources(_Spec):
    # int-or-string in the CRD (cpu: 4 and cpu: "4" are both quantities).
    cpu: str = "4"
    memory: str = "32Gi"

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


class AdapterCache(_Spec):
    gpu_slots: int = Field(default=8, ge=1)
    ram_cache_mb: int = Field(default=8192, ge=0, alias="ramCacheMB")
    disk_cache_mb: int = Field(default=51200, ge=0, alias="diskCacheMB")
    max_rank: int = Field(default=64, ge=1)


class Limits(_Spec):
    max_steps: int = Field(default=50, ge=1)
    max_width: int = Field(default=1024, ge=64)
    max_height: int = Field(default=1024, ge=64)
    queue_size: int = Field(default=32, ge=1)
    request_timeout_seconds: int = Field(default=300, ge=1)


class ModelCache(_Spec):
    claim_name: str | None = None
    size_limit: str = "100Gi"


class SecretKeyRef(_Spec):
    name: str = Field(min_length=1)
    key: str = "token"


class Routing(_Spec):
    aliases: tuple[str, ...] = ()
    load_bound: float = Field(default=1.25, ge=1.0)
    activation_timeout_seconds: float = Field(default=0.0, ge=0.0)
    policy: Literal["cost", "rendezvous"] = "cost"
    idle_probes: int = Field(default=3, ge=0, le=16)


class ConfigMapKeyRef(_Spec):
    config_map_name: str = Field(min_length=1)
    key: str = "ca.crt"


class AdapterSources(_Spec):
    allow_private_urls: bool = False
    path_roots: tuple[str, ...] = ("/models/loras",)
    ca_bundle: ConfigMapKeyRef | None = None


class OpenCatalog(_Spec):
    """spec.openCatalog: hub adapters served on demand (the workers enforce it; see loraplex.api.open_catalog)."""

    enabled: bool = False
    allow_owners: tuple[str, ...] = ()
    allow_repos: tuple[str, ...] = ()
    deny_owners: tuple[str, ...] = ()
    deny_repos: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    required_tag: str = "lora"
    max_file_mb: int = Field(default=512, ge=1, alias="maxFileMB")
    use_token: bool = False
    positive_ttl_seconds: int = Field(default=3600, ge=0)
    negative_ttl_seconds: int = Field(default=300, ge=0)
    endpoint: str | None = None

    def policy(self) -> OpenCatalogPolicy:
        """The worker's policy document (its --open-catalog)."""
        return OpenCatalogPolicy(
            enabled=self.enabled,
            allow_owners=self.allow_owners,
            allow_repos=self.allow_repos,
            deny_owners=self.deny_owners,
            deny_repos=self.deny_repos,
            base_models=self.base_models,
            required_tag=self.required_tag,
            max_file_bytes=self.max_file_mb << 20,
            use_token=self.use_token,
            positive_ttl_seconds=self.positive_ttl_seconds,
            negative_ttl_seconds=self.negative_ttl_seconds,
            endpoint=self.endpoint,
        )


class PoolSpec(_Spec):
    model: ModelRef
    image: str = DEFAULT_INFERENCE_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    replicas: int = Field(default=1, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    autoscaling: Autoscaling = Autoscaling()
    gpu: Gpu = Gpu()
    resources: Resources = Resources()
    adapter_cache: AdapterCache = AdapterCache()
    limits: Limits = Limits()
    startup_timeout_seconds: int = Field(default=1800, ge=1)
    drain_seconds: int = Field(default=10, ge=0)
    node_selector: dict[str, str] = {}
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    model_cache: ModelCache = ModelCache()
    hub_token_secret: SecretKeyRef | None = None
    routing: Routing = Routing()
    adapter_sources: AdapterSources = AdapterSources()
    open_catalog: OpenCatalog = OpenCatalog()


class AdapterSource(_Spec):
    type: Literal["hub", "url", "path"]
    repo: str | None = None
    revision: str = "main"
    filename: str | None = None
    token_secret: SecretKeyRef | None = None
    url: str | None = None
    sha256: str | None = None
    path: str | None = None


class AdapterSpec(_Spec):
    pool: str | None = None
    base_model: str | None = None
    source: AdapterSource
    aliases: tuple[str, ...] = ()
    scale: float = 1.0
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=8, ge=1)
    pinned: bool = False


def _parse(model: type[BaseModel], spec: dict[str, Any] | None, kind: str) -> Any:
    try:
        return model.model_validate(spec or {})
    except ValidationError as e:
        parts = [f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise SpecError(f"invalid {kind} spec: " + "; ".join(parts)) from e


def parse_pool_spec(spec: dict[str, Any] | None) -> PoolSpec:
    return _parse(PoolSpec, spec, "BaseModelPool")


def parse_adapter_spec(spec: dict[str, Any] | None) -> AdapterSpec:
    return _parse(AdapterSpec, spec, "LoraAdapter")
