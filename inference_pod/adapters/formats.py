"""Read a LoRA safetensors file into one canonical form, whatever its key format.

Accepted: diffusers/peft keys (`unet.<module>.lora_A.weight`), the older
diffusers keys (`...to_q_lora.down.weight`) and kohya/A1111 keys
(`lora_unet_<module_with_underscores>.lora_down.weight` + `.alpha`, SGM
`input_blocks` names included) for SDXL; for FLUX diffusers/peft
(`transformer.<module>.lora_A.weight`), kohya (`lora_unet_double_blocks_0_img_attn_qkv...`, fused projections
split by diffusers), ComfyUI (`diffusion_model.`), XLabs and the other layouts `FluxPipeline.lora_state_dict`
reads. Conversion goes through diffusers' own `lora_state_dict` and its peft
key converters, so every format diffusers accepts maps to the same module
paths it would patch. A file made for the other family (its keys tell) is
refused naming both families.

Canonical form: module path (`unet.down_blocks.1....to_q`,
`transformer.transformer_blocks.0.attn.add_q_proj`,
`text_encoder.text_model....q_proj`) -> LoraPair(down [r, in], up [out, r],
alpha). Only safetensors are read; pickle-based files never are.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from inference_pod.families import FLUX, SDXL, ModelFamily, family_of_lora_keys

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
FLUX_COMPONENTS = ("transformer", "text_encoder")
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


class AdapterFormatError(ValueError):
    """The file is not a LoRA we can read; the message says why."""


@dataclass(frozen=True)
class LoraPair:
    down: torch.Tensor  # [rank, in_features]
    up: torch.Tensor  # [out_features, rank]
    alpha: float | None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank, the factor folded into `up` when the adapter is prepared."""
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank


@dataclass(frozen=True)
class CanonicalLora:
    modules: dict[str, LoraPair]
    source_format: str  # "peft", "diffusers-legacy" or "kohya"
    nbytes: int

    @property
    def rank(self) -> int:
        return max((p.rank for p in self.modules.values()), default=0)

    def components(self) -> set[str]:
        return {k.split(".", 1)[0] for k in self.modules}


def check_safetensors_header(path: Path) -> dict:
    """Validate the safetensors framing without reading tensors; refuse pickles by content."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AdapterFormatError("file is too short to be safetensors")
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise AdapterFormatError("file is a pickle/torch archive; only .safetensors adapters are loaded")
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or n > SAFETENSORS_MAX_HEADER:
            # The length field is the file's first 8 bytes: never echoed (error messages reach clients).
            raise AdapterFormatError("corrupt safetensors: the header length field is out of range")
        raw = f.read(n)
    if len(raw) != n:
        raise AdapterFormatError("corrupt safetensors: header truncated")
    try:
        header = json.loads(raw)
    except UnicodeDecodeError:
        raise AdapterFormatError("corrupt safetensors header: not UTF-8") from None
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"corrupt safetensors header: not JSON ({e.msg} at offset {e.pos})") from None
    except RecursionError:
        raise AdapterFormatError("corrupt safetensors header: nested too deeply") from None
    if not isinstance(header, dict):
        raise AdapterFormatError("corrupt safetensors header: not an object")
    data_len = path.stat().st_size - 8 - n
    for i, (name, info) in enumerate(header.items()):
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            ok = isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_len
        except (KeyError, TypeError, ValueError):
            raise AdapterFormatError(f"corrupt safetensors: header entry #{i} has no valid data_offsets") from None
        if not ok:
            raise AdapterFormatError(f"corrupt safetensors: tensor entry #{i} lies outside the file")
    return header


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise AdapterFormatError(f"{path.name}: only .safetensors files are loaded (pickle formats are refused)")
    check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises several types for a bad file; its message may quote the file
        raise AdapterFormatError(f"corrupt safetensors: the file cannot be read ({type(e).__name__})") from e


def _detect_format(keys: list[str]) -> str:
    if any(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft"
    if any(".lora.down." in k or "_lora.down." in k for k in keys):
        return "diffusers-legacy"
    raise AdapterFormatError("no LoRA keys found (expected lora_A/lora_B, lora.down/up or kohya lora_down/up)")


_UNSUPPORTED_MARKERS = {
    "lora_magnitude_vector": "DoRA adapters are not supported",
    ".dora_scale": "DoRA adapters are not supported",
    "lora_mid": "LoCon/LyCORIS mid weights are not supported",
    "hada_": "LoHa adapters are not supported",
    "lokr_": "LoKr adapters are not supported",
}


# The down (A) weight of one LoRA layer, in every accepted key format.
_DOWN_KEY = re.compile(r"(?:lora_down|lora_A|lora\.down|lora_linear_layer\.down)(?:\.[^.]+)?\.weight$")
_SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")


def _split_sgm(state_dict: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Separate SGM-named kohya UNet keys from diffusers-named ones when a file mixes both.

    diffusers' SGM remapping drops every SGM key of a file that also has
    diffusers block names, silently losing those layers; converting the two
    groups on their own keeps them.
    """
    sgm = {k: v for k, v in state_dict.items() if k.startswith("lora_unet_") and any(b in k for b in _SGM_BLOCKS)}
    if not sgm or not any(k.startswith("lora_unet_") and k not in sgm for k in state_dict):
        return [state_dict]
    return [{k: v for k, v in state_dict.items() if k not in sgm}, sgm]


def check_family(keys: list[str], family: ModelFamily) -> None:
    """Refuse a file whose keys say it was made for the other family."""
    made_for = family_of_lora_keys(keys)
    if made_for is not None and made_for != family:
        example = next(k for k in keys if family_of_lora_keys([k]) == made_for)
        raise AdapterFormatError(
            f"this is a {made_for.label} LoRA (keys like {example.rsplit('.', 2)[0]!r}); "
            f"this pool serves a {family.label} model"
        )


def canonicalize(state_dict: dict[str, torch.Tensor], unet_config=None, family: ModelFamily = SDXL) -> CanonicalLora:
    """Map any accepted key format to canonical module paths via diffusers' converters.

    Every LoRA layer of the file must come out the other side: a layer that
    diffusers' converters would skip is an error, not a silently weaker adapter.
    """
    keys = list(state_dict)
    for marker, why in _UNSUPPORTED_MARKERS.items():
        if any(marker in k for k in keys):
            raise AdapterFormatError(why)
    check_family(keys, family)
    if family == FLUX:
        return _canonicalize_flux(state_dict)
    fmt = _detect_format(keys)
    nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    modules: dict[str, LoraPair] = {}
    for group in _split_sgm(state_dict):
        for name, pair in _canonical_modules(group, unet_config).items():
            if name in modules:
                raise AdapterFormatError(f"LoRA layer {name} appears twice (under two key naming schemes)")
            modules[name] = pair
    expected = sum(1 for k in keys if _DOWN_KEY.search(k))
    if len(modules) != expected:
        raise AdapterFormatError(
            f"only {len(modules)} of the file's {expected} LoRA layers map to modules of this base model "
            "(keys for another architecture, or an unsupported naming scheme)"
        )
    if not modules:
        raise AdapterFormatError("no LoRA layers for unet or text encoders found")
    return CanonicalLora(modules=modules, source_format=fmt, nbytes=nbytes)


def _canonical_modules(state_dict: dict[str, torch.Tensor], unet_config=None) -> dict[str, LoraPair]:
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )
    from diffusers.utils.state_dict_utils import StateDictType

    try:
        sd, alphas = StableDiffusionXLPipeline.lora_state_dict(dict(state_dict), unet_config=unet_config)
    except Exception as e:
        raise AdapterFormatError(f"diffusers could not read the LoRA keys: {e}") from e
    alphas = dict(alphas or {})

    modules: dict[str, LoraPair] = {}
    for comp in COMPONENTS:
        part = {k[len(comp) + 1 :]: v for k, v in sd.items() if k.startswith(comp + ".")}
        if not part:
            continue
        comp_alphas = {k[len(comp) + 1 :]: v for k, v in alphas.items() if k.startswith(comp + ".")}
        if comp == "unet":

            def convert(d):
                return convert_unet_state_dict_to_peft(d)
        else:

            def convert(d):
                if any(".lora_A." in k or ".lora_B." in k for k in d):
                    return d
                if any(".lora_linear_layer." in k for k in d):
                    return convert_state_dict_to_peft(d)
                return convert_state_dict_to_peft(
                    convert_state_dict_to_diffusers(d, original_type=StateDictType.DIFFUSERS_OLD)
                )

        peft_sd = convert(part)
        # Alphas carry the old key names; map each through the same converter
        # by converting the down key it belongs to on its own.
        alpha_by_module: dict[str, float] = {}
        for akey, aval in comp_alphas.items():
            down_key = akey[: -len(".alpha")] if akey.endswith(".alpha") else akey
            if not down_key.endswith(".weight"):
                down_key += ".weight"
            converted = list(convert({down_key: torch.zeros(1)}))
            for ck in converted:
                if ".lora_A." in ck:
                    alpha_by_module[ck.split(".lora_A.")[0]] = float(aval)
        modules.update(_pairs(comp, peft_sd, alpha_by_module))
    return modules


# The down weight of one FLUX LoRA layer: the SDXL formats' names plus XLabs' (`processor.qkv_lora1.down.weight`).
_FLUX_DOWN_KEY = re.compile(
    r"(?:lora_down|lora_A|lora\.down|_lora\d+\.down|lora_linear_layer\.down)(?:\.[^.]+)?\.weight$"
)


# How many modules one source LoRA layer becomes in diffusers' FLUX converters: fused q/k/v projections
# (kohya `..._qkv`, XLabs `qkv_lora`) split into three, the single blocks' fused `linear1` into q, k, v and
# proj_mlp; every other layer maps to one module.
def _flux_outputs(down_key: str) -> int:
    if "linear1" in down_key:
        return 4
    return 3 if "qkv" in down_key else 1


def _canonicalize_flux(state_dict: dict[str, torch.Tensor]) -> CanonicalLora:
    from diffusers import FluxPipeline

    keys = list(state_dict)
    fmt = "kohya" if any(".lora_down." in k for k in keys) else _detect_flux_format(keys)
    nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    expected = sum(_flux_outputs(k) for k in keys if _FLUX_DOWN_KEY.search(k))
    # diffusers' kohya converter folds alpha into the text-encoder (`lora_te1_`) factors in place: give it copies
    # of those (small: CLIP's attention) so the caller's tensors keep their values.
    given = {k: v.clone() if k.startswith("lora_te") else v for k, v in state_dict.items()}
    try:
        sd, alphas = FluxPipeline.lora_state_dict(given, return_alphas=True)
    except Exception as e:
        raise AdapterFormatError(f"diffusers could not read the FLUX LoRA keys: {e}") from e
    alphas = dict(alphas or {})
    modules: dict[str, LoraPair] = {}
    for comp in FLUX_COMPONENTS:
        part = {k[len(comp) + 1 :]: v for k, v in sd.items() if k.startswith(comp + ".")}
        if not part:
            continue
        if any(".lora_A." not in k and ".lora_B." not in k for k in part):
            part = _text_encoder_to_peft(part)
        alpha_by_module = {
            k[len(comp) + 1 : -len(".alpha")]: float(v) for k, v in alphas.items() if k.startswith(comp + ".")
        }
        modules.update(_pairs(comp, part, alpha_by_module))
    other = sorted(k for k in sd if not k.startswith(tuple(c + "." for c in FLUX_COMPONENTS)))
    if other:
        raise AdapterFormatError(f"LoRA layers outside the FLUX transformer and text encoder: {other[:3]}")
    if not modules:
        raise AdapterFormatError("no LoRA layers for the FLUX transformer or text encoder found")
    if len(modules) != expected:
        raise AdapterFormatError(
            f"only {len(modules)} of the {expected} modules the file's LoRA layers stand for map to modules of "
            "this base model (keys for another architecture, or an unsupported naming scheme)"
        )
    return CanonicalLora(modules=modules, source_format=fmt, nbytes=nbytes)


def _detect_flux_format(keys: list[str]) -> str:
    if any(".processor." in k for k in keys):
        return "xlabs"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft"
    raise AdapterFormatError("no FLUX LoRA keys found (expected lora_A/lora_B, kohya lora_down/up or XLabs)")


def _text_encoder_to_peft(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.state_dict_utils import StateDictType

    if any(".lora_linear_layer." in k for k in d):
        return convert_state_dict_to_peft(d)
    return convert_state_dict_to_peft(convert_state_dict_to_diffusers(d, original_type=StateDictType.DIFFUSERS_OLD))


def _pairs(comp: str, peft_sd: dict[str, torch.Tensor], alpha_by_module: dict[str, float]) -> dict[str, LoraPair]:
    """peft-keyed down/up weights of one component -> canonical pairs, checked for shape and pairing."""
    downs = {k.split(".lora_A.")[0]: v for k, v in peft_sd.items() if ".lora_A." in k}
    ups = {k.split(".lora_B.")[0]: v for k, v in peft_sd.items() if ".lora_B." in k}
    other = [k for k in peft_sd if ".lora_A." not in k and ".lora_B." not in k]
    if other:
        raise AdapterFormatError(f"unsupported keys in {comp}: {other[:3]}")
    if set(downs) != set(ups):
        missing = sorted(set(downs) ^ set(ups))[:3]
        raise AdapterFormatError(f"{comp}: unpaired lora down/up weights for {missing}")
    modules: dict[str, LoraPair] = {}
    for mod, down in downs.items():
        up = ups[mod]
        if down.dim() != 2 or up.dim() != 2:
            raise AdapterFormatError(f"{comp}.{mod}: only Linear LoRA layers are supported (got {tuple(down.shape)})")
        if up.shape[1] != down.shape[0]:
            raise AdapterFormatError(f"{comp}.{mod}: up {tuple(up.shape)} does not match down {tuple(down.shape)}")
        modules[f"{comp}.{mod}"] = LoraPair(down=down, up=up, alpha=alpha_by_module.get(mod))
    return modules


def load_adapter_file(path: Path, unet_config=None, family: ModelFamily = SDXL) -> CanonicalLora:
    return canonicalize(read_safetensors(path), unet_config=unet_config, family=family)
