"""`loraplex local --flux`: an SDXL and a FLUX pool side by side, every request entering the SDXL pool's sidecar."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_pod.local.stack import run_local

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_local_stack_serves_sdxl_and_flux_pools(tmp_path: Path, capsys) -> None:
    work = tmp_path / "local"
    names = ["square", "flux-ink", "flux-film-lora", "tiny-flux", "outline"]
    assert run_local(work, steps=1, requests=names, flux=True) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line[:1].isdigit()}
    assert set(rows) == set(names), out
    for name in ("flux-ink", "flux-film-lora", "tiny-flux"):
        assert "tiny-flux (FLUX)" in rows[name], out
    for name in ("square", "outline"):
        assert "drawing (SDXL)" in rows[name], out
    images = sorted((work / "images").iterdir())
    assert len(images) == len(names) and all(p.read_bytes().startswith(PNG_MAGIC) for p in images)
    # An adapter changes the image: the FLUX adapter and the FLUX base model differ.
    by_model = {p.name.split("-", 1)[1]: p.read_bytes() for p in images}
    assert by_model["flux-ink.png"] != by_model["tiny-flux.png"]
