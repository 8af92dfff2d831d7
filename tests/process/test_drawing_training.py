"""The drawing trainer is deterministic for a seed: two runs of its quick schedule write the same weights.

Each run is a real `python -m inference_pod.drawing.train` process on the CPU (the quick schedule: a few steps of
every phase, the VAE, the UNet and the three peft LoRAs, the same code as the full schedule). The files are compared
by their tensors and metadata: safetensors writes its metadata map in hash order, so equal files may differ in bytes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _train(out: Path, seed: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "inference_pod.drawing.train", "--quick", "--no-eval", "--device", "cpu"]
    cmd += ["--threads", "1", "--seed", str(seed), "--out", str(out)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen[bytes]) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]


def _weights(root: Path) -> dict[str, tuple[dict[str, str] | None, dict[str, object]]]:
    files = sorted(root.rglob("*.safetensors"))
    assert len(files) >= 1 + 2 * 3, files  # the model's weights and each LoRA in both formats
    weights = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            weights[str(f.relative_to(root))] = (st.metadata(), {k: st.get_tensor(k) for k in st.keys()})  # noqa: SIM118
    return weights


def _same(a: dict, b: dict) -> list[str]:
    """The files whose metadata or any tensor differ."""
    assert a.keys() == b.keys()
    differ = []
    for name in a:
        (meta_a, ta), (meta_b, tb) = a[name], b[name]
        if meta_a != meta_b or ta.keys() != tb.keys() or any(not ta[k].equal(tb[k]) for k in ta):
            differ.append(name)
    return differ


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    runs = {"a": (tmp_path / "a", 7), "b": (tmp_path / "b", 7), "c": (tmp_path / "c", 8)}
    procs = [_train(out, seed) for out, seed in runs.values()]
    for p in procs:
        _finish(p)
    a, b, c = (_weights(out) for out, _ in runs.values())
    assert _same(a, b) == []
    # A different seed trains different weights in every trained file (so the check above compared something); the
    # text encoders are not trained (they keep the architecture's seeded weights, whatever the training seed).
    trained = sorted(n for n in a if not n.startswith("model/text_encoder"))
    assert len(trained) == len(a) - 2
    assert sorted(_same(a, c)) == trained


def test_one_lora_trained_on_a_model_from_before(tmp_path: Path) -> None:
    """--from-model trains only the named LoRAs, on the given model's weights, with the schedule's plan for each."""
    from inference_pod.drawing.train import QUICK

    base, out = tmp_path / "base", tmp_path / "outline"
    _finish(_train(base, 7))
    cmd = [sys.executable, "-m", "inference_pod.drawing.train", "--quick", "--no-eval", "--device", "cpu"]
    cmd += ["--threads", "1", "--seed", "7", "--from-model", str(base / "model"), "--styles", "outline"]
    _finish(subprocess.Popen([*cmd, "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    assert sorted(f.name for f in out.rglob("*") if f.is_file()) == ["outline.kohya.safetensors", "outline.safetensors"]
    steps, rank, _ = QUICK.lora_plan("outline")
    assert rank != QUICK.lora_rank  # the quick schedule overrides outline's rank, so this checks the override is used
    with safe_open(str(out / "loras" / "outline.safetensors"), "pt") as st:
        assert st.metadata()["rank"] == str(rank)
        downs = [k for k in st.keys() if "lora_A" in k]  # noqa: SIM118
        assert downs and all(st.get_tensor(k).shape[0] == rank for k in downs)
    with safe_open(str(base / "loras" / "outline.safetensors"), "pt") as st:
        assert st.metadata()["rank"] == str(rank)  # a full run trains the same plan
