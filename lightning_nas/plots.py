"""Figures for a search: BINAS-style contribution heatmaps and accuracy-vs-latency Pareto plots (PNG)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lightning_nas.bilinear import BilinearTable
from lightning_nas.io import atomic_write_bytes

__all__ = ["plot_contributions", "plot_pareto"]


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_contributions(table: BilinearTable, path: str | Path, *, scale: float = 100.0, unit: str = "pp") -> Path:
    """Heatmaps of a table's block terms (one panel per stage: configs × block positions) and depth terms.

    For an accuracy table these are BINAS's Fig. 8: ``Δ^s_{b,c}`` per stage and block position and
    ``Δ^s_b`` per depth, in percentage points with the default ``scale``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    staged = table.staged
    n = staged.num_stages
    fig, axes = plt.subplots(1, n + 1, figsize=(2.2 * (n + 1) + 1.5, 0.32 * staged.num_configs + 2.0), squeeze=False)
    values = table.block * scale
    limit = float(np.abs(values[staged.block_exists()]).max()) or 1.0
    names = [staged.config_name(0, 0, c) for c in range(staged.num_configs)]
    for s, stage in enumerate(staged.stages):
        ax = axes[0, s]
        image = ax.imshow(values[s, : stage.num_blocks].T, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_title(f"stage {s}")
        ax.set_xticks(range(stage.num_blocks), [f"b{b}" for b in range(stage.num_blocks)])
        ax.set_yticks(range(staged.num_configs), names if s == 0 else [""] * staged.num_configs, fontsize=7)
    fig.colorbar(image, ax=axes[0, :n].tolist(), label=f"block {table.name} term ({unit})")
    ax = axes[0, n]
    depth = np.where(staged.depth_exists(), table.depth * scale, np.nan)
    ax.imshow(depth.T, cmap="RdBu", vmin=-np.nanmax(np.abs(depth)) or -1, vmax=np.nanmax(np.abs(depth)) or 1, aspect="auto")
    for s, stage in enumerate(staged.stages):
        for j, d in enumerate(stage.depths):
            ax.text(s, j, f"d={d}\n{depth[s, j]:+.1f}", ha="center", va="center", fontsize=7)
    ax.set_title("depth terms")
    ax.set_xticks(range(n), [f"s{s}" for s in range(n)])
    ax.set_yticks([])
    return _save(fig, path)


def plot_pareto(
    cloud: tuple[Sequence[float], Sequence[float]] | None,
    points: Sequence[Mapping[str, float]],
    path: str | Path,
    *,
    x_label: str = "latency (ms)",
    y_label: str = "accuracy",
) -> Path:
    """Accuracy vs latency: a cloud of predicted ``(x, y)`` for random subnets and the solved targets.

    Each point is a mapping with ``predicted_x``, ``predicted_y`` and optionally ``measured_x``,
    ``measured_y`` and ``target`` (the latency limit, drawn as a vertical dotted line).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    if cloud is not None:
        ax.scatter(cloud[0], cloud[1], s=6, c="0.75", label="random subnets (predicted)")
    ax.plot([p["predicted_x"] for p in points], [p["predicted_y"] for p in points], "o-", c="C0", label="optimum (predicted)")
    measured = [p for p in points if "measured_x" in p and "measured_y" in p]
    if measured:
        ax.plot([p["measured_x"] for p in measured], [p["measured_y"] for p in measured], "s--", c="C3", label="optimum (measured)")
    for p in points:
        if "target" in p:
            ax.axvline(p["target"], c="0.5", ls=":", lw=0.8)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
