"""Hub metadata checks on ModelInfo-shaped data (pure), and the offline fetch path."""

from __future__ import annotations

import time

import pytest
from huggingface_hub import ModelInfo

from loraplex_operator.clients.hub import HubError, fetch_model_info
from loraplex_operator.logic.hubmeta import check_hub_metadata, declared_base_models, pick_weights

SHA = "a" * 40
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


def info(**kw) -> ModelInfo:
    """A ModelInfo built the way huggingface_hub builds it from the API's JSON."""
    doc = {
        "id": "org/pixel-lora",
        "sha": SHA,
        "tags": ["lora", "diffusers", f"base_model:adapter:{SDXL}"],
        "cardData": {"base_model": SDXL, "tags": ["lora"]},
        "siblings": [{"rfilename": "README.md"}, {"rfilename": "pixel.safetensors", "size": 23_000_000}],
    }
    doc.update(kw)
    return ModelInfo(**doc)


def test_a_good_lora_pins_the_commit_and_picks_the_file() -> None:
    check = check_hub_metadata(info(), [SDXL])
    assert check.ok and check.reason == "Resolved"
    assert (check.commit, check.filename, check.size) == (SHA, "pixel.safetensors", 23_000_000)


def test_base_model_sources_and_normalisation() -> None:
    assert declared_base_models(info()) == {SDXL}
    only_tag = info(cardData=None, tags=["lora", "base_model:Org/Model"])
    assert declared_base_models(only_tag) == {"org/model"}
    as_list = info(cardData={"base_model": [SDXL, "other/model"]})
    assert check_hub_metadata(as_list, ["other/model"]).ok
    # a plain dict works too (no huggingface_hub types needed)
    assert check_hub_metadata(
        {"sha": SHA, "tags": ["LoRA"], "card_data": {"base_model": SDXL}, "siblings": [{"rfilename": "w.safetensors"}]},
        [SDXL.upper()],
    ).ok


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"tags": ["diffusers"], "cardData": {"base_model": SDXL}}, "NotALora"),
        ({"tags": ["lora"], "cardData": {}}, "BaseModelUnknown"),
        (
            {
                "cardData": {"base_model": "runwayml/stable-diffusion-v1-5"},
                "tags": ["lora", "base_model:runwayml/stable-diffusion-v1-5"],
            },
            "BaseModelMismatch",
        ),
        ({"sha": None}, "NoCommit"),
        ({"siblings": [{"rfilename": "pixel.bin"}]}, "UnsafeFormat"),
        ({"siblings": [{"rfilename": "README.md"}]}, "NoWeights"),
        ({"siblings": [{"rfilename": "a.safetensors"}, {"rfilename": "b.safetensors"}]}, "AmbiguousWeights"),
    ],
)
def test_problems_have_clear_reasons(kw: dict, reason: str) -> None:
    check = check_hub_metadata(info(**kw), [SDXL])
    assert not check.ok and check.reason == reason and check.message


def test_mismatch_message_names_both_models() -> None:
    check = check_hub_metadata(info(cardData={"base_model": "a/b"}, tags=["lora"]), [SDXL])
    assert "a/b" in check.message and SDXL in check.message


def test_pick_weights() -> None:
    files = {"x.safetensors": 1, "pytorch_lora_weights.safetensors": 2, "y.bin": 3}
    assert pick_weights(files, None)[0] == "pytorch_lora_weights.safetensors"
    assert pick_weights(files, "x.safetensors")[0] == "x.safetensors"
    assert pick_weights(files, "y.bin")[1] == "UnsafeFormat"
    assert pick_weights(files, "z.safetensors")[1] == "FileNotFound"


def test_unreachable_hub_is_a_retryable_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 9: the same failure class as "no network", without waiting on DNS.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(HubError) as err:
        fetch_model_info("org/repo", "main", None, timeout_s=5)
    assert err.value.retryable and err.value.reason == "HubUnreachable"
    assert time.monotonic() - started < 30


FLUX_DEV, FLUX_SCHNELL = "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"


def flux_info(base: str = FLUX_DEV) -> ModelInfo:
    return info(tags=["lora", "flux", f"base_model:adapter:{base}"], cardData={"base_model": base})


def test_flux_base_ids_are_known() -> None:
    from loraplex_operator.logic.families import family_of_model, pool_family

    assert family_of_model(FLUX_DEV) == family_of_model(" Black-Forest-Labs/FLUX.1-schnell/") == "flux"
    assert family_of_model(SDXL) == "sdxl" and family_of_model("org/unknown") is None
    assert pool_family("org/unknown", "flux") == "flux"  # declared wins
    assert pool_family(FLUX_DEV, "auto") == "flux" and pool_family("/models/mine", "auto") is None


def test_flux_loras_on_flux_pools() -> None:
    assert check_hub_metadata(flux_info(), [FLUX_DEV], pool_family="flux").ok
    # FLUX.1 [dev] and [schnell] share the architecture: a dev LoRA on a schnell pool is served.
    assert check_hub_metadata(flux_info(), [FLUX_SCHNELL], pool_family="flux").ok
    check = check_hub_metadata(flux_info(), ["org/other-flux-finetune"], pool_family="flux")
    assert not check.ok and check.reason == "BaseModelMismatch"


@pytest.mark.parametrize(
    "lora,pool,family,message",
    [
        (info(), FLUX_DEV, "flux", f"LoRA is for {SDXL} \\(SDXL\\); the pool serves a FLUX model"),
        (flux_info(), SDXL, "sdxl", "LoRA is for black-forest-labs/flux.1-dev \\(FLUX\\); the pool serves a SDXL"),
        (flux_info(), "/models/my-sdxl", "sdxl", "\\(FLUX\\); the pool serves a SDXL model \\(/models/my-sdxl\\)"),
    ],
)
def test_a_lora_of_the_other_family_is_refused_naming_both(lora, pool, family, message) -> None:
    import re

    check = check_hub_metadata(lora, [pool], pool_family=family)
    assert not check.ok and check.reason == "BaseModelFamilyMismatch"
    assert re.search(message, check.message), check.message
