"""Figures for a search (PNG): BINAS-style contribution heatmaps, accuracy-vs-latency Pareto plots, predicted-vs-measured
ranking scatters, α trajectories and the skip-gap diagnostic."""

from __future__ import annotations

import errno
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lightning_nas.bilinear import BilinearTable
from lightning_nas.io import atomic_write_bytes

__all__ = [
    "budget_violations", "plot_alpha_trajectories", "plot_contributions", "plot_pareto", "plot_ranking", "plot_skip_gap",
]


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


def _format_value(value: float, digits: int = 2) -> str:
    """``value`` signed to ``digits`` significant figures: ``0.0004 → "+0.0004"``, ``-3.14159 → "-3.1"``, ``0 → "0"``.

    Fixed-point so a cell reads as a number of the panel's unit; a non-zero value always keeps a non-zero
    digit, so it never prints as ``"+0.0"``/``"-0.0"``. NaN (a cell that does not exist) prints ``""``.
    """
    if not math.isfinite(value):
        return ""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    if decimals > 6:  # below 1e-6 the zeros would outnumber the digits
        return f"{value:+.{digits - 1}e}"
    text = f"{value:+.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _symmetric_limit(values: np.ndarray) -> float:
    # Each panel's own |max| so a stage with small terms is not washed out by another's large ones; 1 for an all-zero panel.
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _annotate_cells(ax, values: np.ndarray, limit: float, prefix: Sequence[Sequence[str]] | None = None) -> None:
    # values: (columns, rows) as drawn by imshow(values.T); white text where the colour is dark.
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            text = _format_value(float(v)) if prefix is None else f"{prefix[i][j]}\n{_format_value(float(v))}"
            ax.text(i, j, text, ha="center", va="center", fontsize=6.5, color="white" if abs(v) > 0.6 * limit else "black")


def _colorbar(fig, image, ax, unit: str) -> None:
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label(unit, fontsize=7)
    bar.ax.tick_params(labelsize=6)


# Past this many cells in a block panel the printed values would overlap; the colour scale alone must serve.
_MAX_ANNOTATED_CELLS = 96


def plot_contributions(table: BilinearTable, path: str | Path, *, scale: float | None = None, unit: str | None = None) -> Path:
    """Heatmaps of a table's block terms (one panel per stage: configs × block positions) and depth terms.

    For an accuracy table these are BINAS's Fig. 8: ``Δ^s_{b,c}`` per stage and block position and
    ``Δ^s_b`` per depth, by default in percentage points (``scale=100``, ``unit="pp"``); a
    ``link="log_error"`` table's terms are plotted as they are, in nats of ``−log(error)``.

    Every panel has its own colour scale, symmetric around 0 (blue: the term adds, red: it takes away)
    and labelled with ``unit``, so compare panels by their printed values, not by colour. Depth cells,
    and block cells while a panel stays readable, print their value to two significant figures.
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
    width = [max(1.0, 0.65 * st.num_blocks) for st in staged.stages] + [max(1.0, 0.6 * n)]
    fig, axes = plt.subplots(1, n + 1, figsize=(sum(width) + 1.1 * (n + 1) + 0.8, 0.32 * staged.num_configs + 2.2),
                             squeeze=False, width_ratios=width, layout="constrained")
    exists = staged.config_exists()
    values = np.where(exists, table.block * scale, np.nan)  # blocks with fewer configurations: blank cells
    uniform = len({tuple(c) for st in staged.stages for c in st.configs}) == 1  # one set of names serves every panel
    for s, stage in enumerate(staged.stages):
        ax, panel = axes[0, s], values[s, : stage.num_blocks]
        limit = _symmetric_limit(panel)
        image = ax.imshow(panel.T, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        if panel.size <= _MAX_ANNOTATED_CELLS:
            _annotate_cells(ax, panel, limit)
        title = "always active" if stage.depth_label is None else stage.depth_label.removesuffix(".depth").replace("stage", "stage ")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(stage.num_blocks), [f"b{b}" for b in range(stage.num_blocks)], fontsize=7)
        longest = max(range(stage.num_blocks), key=lambda b: len(stage.configs[b]))
        names = [staged.config_name(s, longest, c) for c in range(len(stage.configs[longest]))]
        names += [""] * (staged.num_configs - len(names))
        ax.set_yticks(range(staged.num_configs), names if s == 0 or not uniform else [""] * staged.num_configs, fontsize=7)
        _colorbar(fig, image, ax, unit)
    ax = axes[0, n]
    depth = np.where(staged.depth_exists(), table.depth * scale, np.nan)
    limit = _symmetric_limit(depth)
    image = ax.imshow(depth.T, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    _annotate_cells(ax, depth, limit, [[f"d={d}" for d in st.depths] for st in staged.stages])
    ax.set_title("depth terms", fontsize=8)
    ax.set_xticks(range(n), [f"s{s}" for s in range(n)], fontsize=7)
    ax.set_yticks([])
    _colorbar(fig, image, ax, unit)
    fig.suptitle(f"{table.name} terms per stage ({unit}; each panel has its own colour scale)", fontsize=9)
    return _save(fig, path)


def _pairs(name: str, pair: object) -> tuple[list[float], list[float]] | None:
    # (xs, ys) of equal length, finite; None passes through.
    if pair is None:
        return None
    if not isinstance(pair, Sequence) or len(pair) != 2 or len(pair[0]) != len(pair[1]):
        raise ValueError(f"`{name}` must be (xs, ys) of the same length, or None")
    return _finite(f"{name} x", pair[0]), _finite(f"{name} y", pair[1])


def _check_points(points: Sequence[Mapping[str, object]]) -> None:
    if not isinstance(points, Sequence) or not all(isinstance(p, Mapping) for p in points):
        raise ValueError("`points` must be a list of mappings with 'predicted_x' and 'predicted_y'")
    for i, p in enumerate(points):
        missing = [k for k in ("predicted_x", "predicted_y") if k not in p]
        if missing:
            raise ValueError(f"`points`[{i}] lacks {missing}; each point needs 'predicted_x' and 'predicted_y'")
        for key in ("predicted_x", "predicted_y", "measured_x", "measured_y", "target"):
            if key in p:
                _finite(f"points[{i}].{key}", [p[key]], indexed=False)
        if ("measured_x" in p) != ("measured_y" in p):
            raise ValueError(f"`points`[{i}] has only one of 'measured_x' and 'measured_y'; a measured pick needs both")
        if "label" in p and not isinstance(p["label"], str):
            raise ValueError(f"`points[{i}].label` must be a str, got {type(p['label']).__name__}")


def budget_violations(points: Sequence[Mapping[str, object]]) -> list[int]:
    """Indices of the ``points`` (as for :func:`plot_pareto`) whose ``measured_x`` exceeds their ``target``.

    These are the picks :func:`plot_pareto` flags "over budget"; points without a measurement or a
    target never violate.
    """
    _check_points(points)
    return [i for i, p in enumerate(points) if "measured_x" in p and "target" in p and p["measured_x"] > p["target"]]


def _excess(measured: float, target: float) -> str:
    # Relative to the budget where that means something; a non-positive target only has an absolute excess.
    if target > 0:
        return f"{_format_value(100 * (measured - target) / target)} %"
    return _format_value(measured - target)


def plot_pareto(
    cloud: tuple[Sequence[float], Sequence[float]] | None,
    points: Sequence[Mapping[str, object]],
    path: str | Path,
    *,
    x_label: str = "latency (ms)",
    y_label: str = "accuracy",
    random: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Path:
    """Accuracy vs latency: predicted ``(x, y)`` of random subnets, measured ones, and the solved picks.

    Args:
        cloud: ``(xs, ys)`` *predicted* for random subnets (grey dots), or ``None``.
        points: the picks, each a mapping with ``predicted_x``, ``predicted_y`` and optionally
            ``measured_x`` and ``measured_y`` (together: an arrow runs from the prediction to the
            measurement), ``target`` (the x limit, a vertical dotted line) and ``label`` (a str for
            the annotation). A pick whose ``measured_x > target`` gets a red edge and an
            "over budget +x %" note (see :func:`budget_violations`).
        random: ``(xs, ys)`` *measured* for a sample of random subnets (green), or ``None``.
        x_label: x axis label, with units.
        y_label: y axis label, with units.

    Returns:
        ``path``.
    """
    path = _check_path(path)
    cloud = _pairs("cloud", cloud)
    random = _pairs("random", random)
    violated = set(budget_violations(points))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if cloud is not None:
        ax.scatter(cloud[0], cloud[1], s=6, c="0.75", label="random subnets (predicted)", zorder=1)
    if random is not None:
        ax.scatter(random[0], random[1], s=14, marker="^", c="C2", alpha=0.7, lw=0, label="random subnets (measured)", zorder=2)
    # The predicted picks lie on the table's front, so joining them in x order draws that front.
    front = sorted(points, key=lambda p: p["predicted_x"])
    ax.plot([p["predicted_x"] for p in front], [p["predicted_y"] for p in front], "o-", c="C0", ms=6, lw=1,
            label="pick (predicted)", zorder=4)
    targets = sorted({p["target"] for p in points if "target" in p})
    for k, target in enumerate(targets):
        ax.axvline(target, c="0.4", ls=":", lw=0.9, label="latency target" if k == 0 else None, zorder=0)
    measured_label = "pick (measured)"
    for i, p in enumerate(points):
        if "measured_x" not in p:
            continue
        bad = i in violated
        ax.annotate("", xy=(p["measured_x"], p["measured_y"]), xytext=(p["predicted_x"], p["predicted_y"]),
                    arrowprops={"arrowstyle": "->", "color": "C3" if bad else "0.3", "lw": 0.9, "shrinkA": 3, "shrinkB": 3}, zorder=3)
        ax.scatter(p["measured_x"], p["measured_y"], s=42, marker="s", c="C1", edgecolors="red" if bad else "none",
                   linewidths=2 if bad else 0, label=measured_label, zorder=5)
        measured_label = None
        if bad:  # right of the target line, where the predicted marker (within budget) is not
            ax.annotate(f"over budget {_excess(p['measured_x'], p['target'])}", (p["measured_x"], p["measured_y"]),
                        xytext=(6, -4), textcoords="offset points", fontsize=7, color="red", va="top")
    for p in points:
        # A label names its target line at the top, clear of the markers; a pick without a target is labelled in place.
        if "label" in p and "target" in p:
            ax.annotate(p["label"], (p["target"], 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                        textcoords="offset points", fontsize=7, color="0.3", va="top")
        elif "label" in p:
            ax.annotate(p["label"], (p["predicted_x"], p["predicted_y"]), xytext=(6, 4), textcoords="offset points", fontsize=7)
    if violated:
        ax.scatter([], [], s=42, marker="s", c="C1", edgecolors="red", linewidths=2, label="over budget (measured > target)")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the cloud fills any corner
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_ranking(
    predicted: Sequence[float],
    measured: Sequence[float],
    path: str | Path,
    *,
    error: float | None = None,
    line: tuple[float, float] | None = None,
    x_label: str = "predicted accuracy",
    y_label: str = "measured accuracy",
    title: str | None = None,
) -> Path:
    """Measured against predicted for a sample of subnets: how well the estimator ranks them.

    Args:
        predicted: ``(n,)`` predicted values per subnet, ``n >= 2``, in the units of the labels.
        measured: ``(n,)`` measured values of the same subnets.
        error: the standard error of one measurement (drawn as ±1 s.e. bars), or ``None``.
        line: a calibration ``(slope, intercept)`` drawn as ``intercept + slope · predicted``, or ``None``.
        title: defaults to ``"n random subnets: Kendall τ = …"``.

    Returns:
        ``path``.
    """
    path = _check_path(path)
    predicted, measured = _finite("predicted", list(predicted)), _finite("measured", list(measured))
    if len(predicted) != len(measured):
        raise ValueError(f"`predicted` and `measured` must have the same length, got {len(predicted)} and {len(measured)}")
    if len(predicted) < 2:
        raise ValueError(f"`predicted` needs at least 2 subnets to rank, got {len(predicted)}")
    if error is not None and (_finite("error", [error], indexed=False)[0] < 0):
        raise ValueError(f"`error` must be >= 0 (a standard error), got {error!r}")
    if line is not None:
        if not isinstance(line, Sequence) or len(line) != 2:
            raise ValueError(f"`line` must be (slope, intercept) or None, got {line!r}")
        line = tuple(_finite("line", line))
    if title is None:
        from lightning_nas.estimators import kendall_tau

        tau = kendall_tau(predicted, measured)
        title = f"{len(predicted)} random subnets: Kendall τ = " + (f"{tau:.2f}" if math.isfinite(tau) else "undefined (constant values)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = np.asarray(predicted), np.asarray(measured)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.errorbar(x, y, yerr=error, fmt="o", ms=4, alpha=0.8, elinewidth=0.8,
                label="random subnet" + (" (±1 s.e.)" if error is not None else ""))
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], "k--", lw=0.8, label="measured = predicted")
    if line is not None:
        ends = np.array([x.min(), x.max()])
        ax.plot(ends, line[1] + line[0] * ends, "C1-", lw=1, label=f"calibration: {line[1]:.3g} + {line[0]:.3g} × predicted")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
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
