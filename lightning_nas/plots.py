"""Figures for a search (PNG): BINAS-style contribution heatmaps, accuracy-vs-latency Pareto plots, α trajectories and the skip-gap diagnostic."""

from __future__ import annotations

import errno
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lightning_nas.bilinear import BilinearTable
from lightning_nas.io import atomic_write_bytes

__all__ = ["plot_alpha_trajectories", "plot_contributions", "plot_pareto", "plot_skip_gap"]


def _check_path(path: str | Path) -> Path:
    # Before drawing: a figure that cannot be written should not cost the drawing first.
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"plot path {str(path)!r} is a directory; give a .png file path")
    return path


def _finite(name: str, values: Sequence[float], *, indexed: bool = True) -> list[float]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            where = f"`{name}`[{i}]" if indexed else f"`{name}`"
            raise ValueError(f"{where} must be a finite number, got {v!r} (a NaN here means the upstream "
                             "prediction or measurement failed)")
        out.append(float(v))
    return out


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_contributions(table: BilinearTable, path: str | Path, *, scale: float | None = None, unit: str | None = None) -> Path:
    """Heatmaps of a table's block terms (one panel per stage: configs × block positions) and depth terms.

    For an accuracy table these are BINAS's Fig. 8: ``Δ^s_{b,c}`` per stage and block position and
    ``Δ^s_b`` per depth, by default in percentage points (``scale=100``, ``unit="pp"``); a
    ``link="log_error"`` table's terms are plotted as they are, in nats of ``−log(error)``.
    """
    if not isinstance(table, BilinearTable):
        raise ValueError(f"`table` must be a BilinearTable, got {type(table).__name__}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
                              or scale == 0):
        raise ValueError(f"`scale` must be a finite non-zero number, got {scale!r}")
    path = _check_path(path)
    identity = table.link == "identity"
    scale = (100.0 if identity else 1.0) if scale is None else scale
    unit = ("pp" if identity else "nats of -log error") if unit is None else unit
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    staged = table.staged
    n = staged.num_stages
    fig, axes = plt.subplots(1, n + 1, figsize=(2.2 * (n + 1) + 1.5, 0.32 * staged.num_configs + 2.0), squeeze=False)
    exists = staged.config_exists()
    values = np.where(exists, table.block * scale, np.nan)  # blocks with fewer configurations: blank cells
    limit = float(np.nanmax(np.abs(values))) or 1.0
    uniform = len({tuple(c) for st in staged.stages for c in st.configs}) == 1  # one set of names serves every panel
    for s, stage in enumerate(staged.stages):
        ax = axes[0, s]
        image = ax.imshow(values[s, : stage.num_blocks].T, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        title = "always active" if stage.depth_label is None else stage.depth_label.removesuffix(".depth").replace("stage", "stage ")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(stage.num_blocks), [f"b{b}" for b in range(stage.num_blocks)])
        longest = max(range(stage.num_blocks), key=lambda b: len(stage.configs[b]))
        names = [staged.config_name(s, longest, c) for c in range(len(stage.configs[longest]))]
        names += [""] * (staged.num_configs - len(names))
        ax.set_yticks(range(staged.num_configs), names if s == 0 or not uniform else [""] * staged.num_configs, fontsize=7)
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
    path = _check_path(path)
    if cloud is not None:
        if not isinstance(cloud, Sequence) or len(cloud) != 2 or len(cloud[0]) != len(cloud[1]):
            raise ValueError("`cloud` must be (xs, ys) of the same length, or None")
        cloud = (_finite("cloud x", cloud[0]), _finite("cloud y", cloud[1]))
    if not isinstance(points, Sequence) or not all(isinstance(p, Mapping) for p in points):
        raise ValueError("`points` must be a list of mappings with 'predicted_x' and 'predicted_y'")
    for i, p in enumerate(points):
        missing = [k for k in ("predicted_x", "predicted_y") if k not in p]
        if missing:
            raise ValueError(f"`points`[{i}] lacks {missing}; each point needs 'predicted_x' and 'predicted_y'")
        for key in ("predicted_x", "predicted_y", "measured_x", "measured_y", "target"):
            if key in p:
                _finite(f"points[{i}].{key}", [p[key]], indexed=False)
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


def plot_alpha_trajectories(
    history: Sequence[Mapping[str, object]], path: str | Path, *, labels: Sequence[str] | None = None, columns: int = 3
) -> Path:
    """One panel per edge: every operation's expected weight (softmax α or Dirichlet mean) per epoch.

    Args:
        history: a search callback's ``history`` (``[{"epoch", "weights": {label: {op: w}}}, ...]``).
        labels: the edges to draw (default: all, in order).
        columns: panels per row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("`history` is empty: fit the search for at least one epoch first")
    path = _check_path(path)
    labels = list(labels or history[0]["weights"])
    rows = -(-len(labels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows), squeeze=False, sharex=True, sharey=True)
    epochs = [h["epoch"] for h in history]
    for ax, label in zip(axes.flat, labels):
        for op in history[0]["weights"][label]:
            ax.plot(epochs, [h["weights"][label][op] for h in history], label=op)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("epoch")
    fig.supylabel("mixing weight")
    return _save(fig, path)


def plot_skip_gap(
    history: Sequence[Mapping[str, object]],
    path: str | Path,
    *,
    metric_label: str = "supernet validation accuracy",
    skip: str = "skip_connect",
    conv: Sequence[str] | None = None,
) -> Path:
    """The thesis's Fig. 2.3: mean(w_skip − w_conv) against the supernet's validation accuracy, one point per epoch.

    ``history`` needs each entry's ``"metric"`` (the search callback's ``monitor``); ``skip`` and
    ``conv`` name the operations compared (see :func:`~lightning_nas.differentiable.diagnostics.skip_gap`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_nas.differentiable.diagnostics import CONV_OPS, skip_gap

    conv = CONV_OPS if conv is None else conv
    points = [(h["metric"], skip_gap(h["weights"], skip=skip, conv=conv), h["epoch"]) for h in history if h.get("metric") is not None]
    if not points:
        raise ValueError("`history` has no metric values: pass `monitor=` to the search callback")
    fig, ax = plt.subplots(figsize=(5, 3.8))
    scatter = ax.scatter([p[0] for p in points], [p[1] for p in points], c=[p[2] for p in points], cmap="viridis")
    fig.colorbar(scatter, ax=ax, label="epoch")
    ax.set_xlabel(metric_label)
    ax.set_ylabel("mean(w_skip − w_conv)")
    ax.grid(alpha=0.3)
    return _save(fig, path)
