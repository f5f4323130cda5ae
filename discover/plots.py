"""Figures for reports: small functions, arrays in, one PNG out (matplotlib, no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulate.fileio import atomic_path  # noqa: E402

REFERENCE_STYLE = {"color": "black", "lw": 1.6}
SERIES_COLOURS = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange"]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def overlay_curves(panels: dict, path, xlabel: str, ylabel: str, reference_label: str = "CP2K") -> Path:
    """One panel per key: ``{title: (x, {label: y, ...})}``; the reference label is drawn in black."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (title, (x, series)) in zip(axes[0], panels.items()):
        for k, (label, y) in enumerate(series.items()):
            style = REFERENCE_STYLE if label == reference_label else {"color": SERIES_COLOURS[k % 5], "lw": 1.2}
            ax.plot(x, y, label=label, **style)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    return _save(fig, path)


def parity(panels: dict, path, unit: str = "eV/Å") -> Path:
    """Force parity: ``{title: (reference, predicted)}`` arrays of force components."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.8), squeeze=False)
    for ax, (title, (ref, pred)) in zip(axes[0], panels.items()):
        ref = np.ravel(ref)
        pred = np.ravel(pred)
        lim = float(np.percentile(np.abs(ref), 99.9)) * 1.1
        ax.hexbin(ref, pred, gridsize=70, bins="log", extent=(-lim, lim, -lim, lim), cmap="viridis", mincnt=1)
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        rmse = float(np.sqrt(np.mean((pred - ref) ** 2)))
        ax.set_title(f"{title}\nRMSE {rmse:.3f} {unit}", fontsize=9)
        ax.set_xlabel(f"CP2K force ({unit})")
        ax.set_ylabel(f"model force ({unit})")
        ax.set_aspect("equal")
    return _save(fig, path)


def pair_laws(panels: dict, path) -> Path:
    """u_AB(r) per pair type: ``{pair: (r, {label: u}, (r_lo, r_hi))}``; the sampled range is shaded."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (pair, (r, series, sampled)) in zip(axes[0], panels.items()):
        ax.axvspan(*sampled, color="0.9", label="sampled range")
        finite = []
        for k, (label, u) in enumerate(series.items()):
            ax.plot(r, u, color=SERIES_COLOURS[k % 5], lw=1.3, label=label)
            inside = (r >= sampled[0]) & (r <= sampled[1])
            finite.append(np.asarray(u)[inside])
        values = np.concatenate(finite) if finite else np.zeros(1)
        span = float(values.max() - values.min()) or 1.0
        ax.set_ylim(values.min() - 0.3 * span, values.max() + 0.5 * span)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_title(f"u_{pair}(r)")
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("u (eV)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_fronts(fronts: dict, path) -> Path:
    """``{pair: DataFrame with complexity, validation error, selected flag}`` as scatter plots."""
    n = len(fronts)
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n, 3.4), squeeze=False)
    for ax, (pair, frame) in zip(axes[0], fronts.items()):
        ax.scatter(frame["complexity"], frame["error"], s=14, color="tab:blue")
        if "selected" in frame:
            chosen = frame[frame["selected"].astype(bool)]
            ax.scatter(chosen["complexity"], chosen["error"], s=60, facecolors="none", edgecolors="tab:red",
                       label="selected")
            ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"Pareto front {pair}")
        ax.set_xlabel("complexity")
        ax.set_ylabel("error")
    return _save(fig, path)


def histograms(panels: dict, path, reference_label: str = "CP2K") -> Path:
    """``{title: (xlabel, {label: samples})}`` as overlaid density histograms."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (title, (xlabel, series)) in zip(axes[0], panels.items()):
        samples = [np.ravel(s) for s in series.values()]
        lo = min(float(np.percentile(s, 0.1)) for s in samples)
        hi = max(float(np.percentile(s, 99.9)) for s in samples)
        bins = np.linspace(lo, hi, 60)
        for k, (label, s) in enumerate(series.items()):
            colour = "black" if label == reference_label else SERIES_COLOURS[k % 5]
            ax.hist(np.ravel(s), bins=bins, density=True, histtype="step", color=colour, lw=1.4, label=label)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    return _save(fig, path)
