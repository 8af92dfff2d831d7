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
