"""The drawing trainer's per-style LoRA plans and its refusals of bad options (before any training starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_pod.drawing.train import SCHEDULES, Schedule, main


def test_a_style_without_an_override_gets_the_schedule_plan() -> None:
    sch = Schedule(lora_steps=10, lora_rank=8, lora_lr=1e-3, lora_overrides=(("outline", 30, 16, 2e-3),))
    assert sch.lora_plan("outline") == (30, 16, 2e-3)
    assert sch.lora_plan("square") == (10, 8, 1e-3)


def test_every_schedule_overrides_only_known_styles() -> None:
    from inference_pod.drawing.shapes import STYLES

    for name, sch in SCHEDULES.items():
        assert {style for style, *_ in sch.lora_overrides} <= set(STYLES), name


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--styles", "outline,sepia"], "--styles"),
        (["--styles", ","], "--styles"),
        (["--from-model", "/nonexistent/model"], "--from-model"),
    ],
)
def test_bad_options_are_refused_naming_the_option(
    argv: list[str], names: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert names in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
