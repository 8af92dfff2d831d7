"""PNG line charts drawn with Pillow (no matplotlib needed): latency CDFs, replicas and load over time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


@dataclass
class Series:
    label: str
    x: Sequence[float] | np.ndarray
    y: Sequence[float] | np.ndarray
    step: bool = False
    color: str | None = None


@dataclass
class Panel:
    series: list[Series]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    logx: bool = False
    xlim: tuple[float, float] | None = None
    ylim: tuple[float, float] | None = None
    vline: float | None = None


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10**e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2g}"


def _draw_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], panel: Panel) -> None:
    left, top, right, bottom = box
    f, fs = _font(14), _font(12)
    ml, mr, mt, mb = 70, 20, 30, 45
    x0, y0, x1, y1 = left + ml, top + mt, right - mr, bottom - mb
    xs_all = [np.asarray(s.x, dtype=float) for s in panel.series if len(s.x)]
    ys_all = [np.asarray(s.y, dtype=float) for s in panel.series if len(s.y)]
    if panel.xlim:
        xlo, xhi = panel.xlim
    else:
        xlo = min((float(np.nanmin(x)) for x in xs_all), default=0.0)
        xhi = max((float(np.nanmax(x)) for x in xs_all), default=1.0)
    if panel.ylim:
        ylo, yhi = panel.ylim
    else:
        ylo = min(0.0, min((float(np.nanmin(y)) for y in ys_all), default=0.0))
        yhi = max((float(np.nanmax(y)) for y in ys_all), default=1.0) * 1.05 or 1.0
    if panel.logx:
        xlo = max(xlo, 1e-6)
        xhi = max(xhi, xlo * 1.01)
        lx0, lx1 = math.log10(xlo), math.log10(xhi)

        def px(v: np.ndarray) -> np.ndarray:
            return x0 + (np.log10(np.clip(v, xlo, xhi)) - lx0) / (lx1 - lx0) * (x1 - x0)

        xticks = _log_ticks(xlo, xhi)
    else:
        if xhi <= xlo:
            xhi = xlo + 1.0

        def px(v: np.ndarray) -> np.ndarray:
            return x0 + (np.clip(v, xlo, xhi) - xlo) / (xhi - xlo) * (x1 - x0)

        xticks = _nice_ticks(xlo, xhi)
    if yhi <= ylo:
        yhi = ylo + 1.0

    def py(v: np.ndarray) -> np.ndarray:
        return y1 - (np.clip(v, ylo, yhi) - ylo) / (yhi - ylo) * (y1 - y0)

    for t in _nice_ticks(ylo, yhi, 5):
        yy = float(py(np.array([t]))[0])
        draw.line([(x0, yy), (x1, yy)], fill="#e6e6e6")
        draw.text((x0 - 8, yy), _fmt(t), fill="black", font=fs, anchor="rm")
    for t in xticks:
        xx = float(px(np.array([t]))[0])
        draw.line([(xx, y0), (xx, y1)], fill="#e6e6e6")
        draw.text((xx, y1 + 6), _fmt(t), fill="black", font=fs, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    if panel.vline is not None:
        xx = float(px(np.array([panel.vline]))[0])
        draw.line([(xx, y0), (xx, y1)], fill="#888888", width=1)
    for k, s in enumerate(panel.series):
        x, y = np.asarray(s.x, dtype=float), np.asarray(s.y, dtype=float)
        if len(x) < 1:
            continue
        if len(x) > 4000:  # enough points for a 900 px wide chart
            idx = np.unique(np.linspace(0, len(x) - 1, 4000).astype(int))
            x, y = x[idx], y[idx]
        X, Y = px(x), py(y)
        pts: list[tuple[float, float]] = []
        for i in range(len(X)):
            if s.step and pts:
                pts.append((float(X[i]), pts[-1][1]))
            pts.append((float(X[i]), float(Y[i])))
        draw.line(pts, fill=s.color or COLORS[k % len(COLORS)], width=2)
    # legend
    lx, ly = x0 + 10, y0 + 8
    for k, s in enumerate(panel.series):
        draw.line([(lx, ly + 7), (lx + 22, ly + 7)], fill=s.color or COLORS[k % len(COLORS)], width=3)
        draw.text((lx + 28, ly), s.label, fill="black", font=fs)
        ly += 17
    draw.text(((x0 + x1) / 2, top + 8), panel.title, fill="black", font=f, anchor="mt")
    draw.text(((x0 + x1) / 2, bottom - 18), panel.xlabel, fill="black", font=fs, anchor="mt")
    draw.text((left + 6, (y0 + y1) / 2), panel.ylabel, fill="black", font=fs, anchor="lm")


def save_panels(path: str | Path, panels: list[Panel], width: int = 960, panel_height: int = 400) -> Path:
    img = Image.new("RGB", (width, panel_height * len(panels)), "white")
    draw = ImageDraw.Draw(img)
    for i, panel in enumerate(panels):
        _draw_panel(draw, (0, i * panel_height, width, (i + 1) * panel_height), panel)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    return path


def cdf_series(label: str, values: np.ndarray) -> Series:
    v = np.sort(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    return Series(label, v, (np.arange(1, len(v) + 1) / max(1, len(v))))


def latency_cdf(path: str | Path, results: Sequence[object], title: str = "", target_x: float | None = 1.1) -> Path:
    """CDF of latency / pure inference time, one line per SimResult."""
    series = []
    for r in results:
        m = r.measured & ~r.rejected  # type: ignore[attr-defined]
        series.append(cdf_series(r.policy, r.latency[m] / r.inference[m]))  # type: ignore[attr-defined]
    hi = max((float(s.x[-1]) for s in series if len(s.x)), default=2.0)
    panel = Panel(
        series,
        title or "latency over pure inference time (CDF)",
        "latency / inference (log scale)",
        "fraction",
        logx=True,
        xlim=(1.0, min(max(hi, 1.5), 100.0)),
        ylim=(0.0, 1.0),
        vline=target_x,
    )
    return save_panels(path, [panel])


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    """Centred moving mean over k points (fewer at the ends)."""
    if len(y) <= k:
        return y
    ones = np.ones(k)
    return np.convolve(y, ones, mode="same") / np.convolve(np.ones(len(y)), ones, mode="same")


def day_chart(path: str | Path, results: Sequence[object], title: str = "", from_s: float = 0.0) -> Path:
    """GPUs held per policy over the measured time (all; then shared pools only), and the load."""

    def hours(s: dict) -> np.ndarray:
        return s["t"] / 3600.0

    panels = []
    everyone = []
    shared = []
    for k, r in enumerate(results):
        s = r.series  # type: ignore[attr-defined]
        m = s["t"] >= from_s
        color = COLORS[k % len(COLORS)]
        everyone.append(Series(r.policy, hours(s)[m], s["gpus"][m], step=True, color=color))  # type: ignore[attr-defined]
        if r.kind != "dedicated":  # type: ignore[attr-defined]
            shared.append(Series(r.policy, hours(s)[m], _smooth(s["gpus"][m], 15), color=color))  # type: ignore[attr-defined]
    xl = "hour since midnight (earlier hours: warm-up, not measured)" if from_s else "hour"
    panels.append(Panel(everyone, title or "GPUs held", xl, "GPUs"))
    if shared and len(shared) < len(everyone):
        panels.append(Panel(shared, "shared pools only (15 min mean)", xl, "GPUs"))
    last = results[-1]
    s = last.series  # type: ignore[attr-defined]
    m = s["t"] >= from_s
    panels.append(
        Panel(
            [
                Series("requests per minute (15 min mean)", hours(s)[m], _smooth(s["arrivals"][m] * 60.0, 15)),
                Series(f"busy GPUs, {last.policy} (15 min mean)", hours(s)[m], _smooth(s["busy"][m], 15)),  # type: ignore[attr-defined]
                Series(f"GPUs held, {last.policy} (15 min mean)", hours(s)[m], _smooth(s["gpus"][m], 15)),  # type: ignore[attr-defined]
            ],
            "load",
            xl,
            "",
        )
    )
    return save_panels(path, panels, panel_height=330)
