"""``BilinearTable``: a quantity that adds up over the active blocks of a staged space.

BINAS models both accuracy (Eq. 3) and latency (Eq. 5) as ``αᵀQβ``-style bilinear forms of the
block configurations ``α`` and stage depths ``β``. Unfolded, both say the same thing::

    value(arch) = constant + Σ_s depth[s, d_s] + Σ_s Σ_{b ≤ d_s} block[s, b, c_{s,b}]

with ``d_s`` the depth of stage ``s`` and ``c_{s,b}`` the configuration of its block ``b``. The
estimator fills ``depth`` with the gains ``Δ^s_b`` and ``block`` with ``Δ^s_{b,c}``; a latency
table fills ``block`` with the measured block times and ``constant`` with the fixed parts. The
solvers maximise one table subject to limits on others.

A table may carry a *link*: ``link="log_error"`` says the additive form is the score
``−log(1 − accuracy)`` (errors multiply across decisions), so :meth:`BilinearTable.predict` returns
``1 − exp(−score)``. The link is increasing, so the solvers, which work on the additive form, find
the same optimum as they would on the accuracy itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_nas.io import atomic_write_json, read_json
from lightning_nas.spaces.staged import StagedSpace, structure_difference

__all__ = ["LINKS", "BilinearTable"]

FORMAT = "lightning_nas.bilinear_table"
VERSION = 2  # 2 added ``link``; version-1 files (no link) read as ``link="identity"``
LINKS = ("identity", "log_error")


class BilinearTable:
    """An additive function over a :class:`~lightning_nas.spaces.staged.StagedSpace`.

    Args:
        staged: the structure the indices refer to.
        constant: the part every arch pays (stem, head; or the base accuracy ``E[Acc]``).
        block: ``(S, D, C)`` value of configuration ``c`` at block ``b`` of stage ``s`` when active.
            Entries of missing block positions are ignored.
        depth: ``(S, max_depth_options)`` value of each stage's depth option (default zeros).
        name: what it measures (``"accuracy"``, ``"latency"``, ``"flops"``).
        unit: its unit (``"fraction"``, ``"ms"``, ``"MFLOPs"``).
        metadata: JSON-serialisable facts about how it was made (device, passes, ...).
        link: ``"identity"`` (the value is the additive form) or ``"log_error"`` (the additive form
            is ``−log(1 − value)``: value = ``1 − exp(−additive)``; see the module docstring).
    """

    def __init__(
        self,
        staged: StagedSpace,
        constant: float,
        block: np.ndarray,
        depth: np.ndarray | None = None,
        *,
        name: str = "value",
        unit: str = "",
        metadata: Mapping[str, Any] | None = None,
        link: str = "identity",
    ) -> None:
        if link not in LINKS:
            raise ValueError(f"`link` must be one of {LINKS}, got {link!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string, got {name!r}")
        if not isinstance(unit, str):
            raise ValueError(f"`unit` of table {name!r} must be a string, got {unit!r}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValueError(f"`metadata` of table {name!r} must be a mapping or None, got {type(metadata).__name__}")
        shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
        block = _float_array(block, "block", name)
        if block.shape != shape:
            raise ValueError(f"`block` of table {name!r} must have shape (S, D, C) = {shape}, got {block.shape}")
        depth_shape = (staged.num_stages, staged.max_depth_options)
        depth = np.zeros(depth_shape) if depth is None else _float_array(depth, "depth", name)
        if depth.shape != depth_shape:
            raise ValueError(f"`depth` of table {name!r} must have shape (S, max_depth_options) = {depth_shape}, got {depth.shape}")
        exists = staged.config_exists()
        for what, values in (("block", block[exists]), ("depth", depth[staged.depth_exists()])):
            if not np.isfinite(values).all():
                raise ValueError(f"table {name!r} has non-finite `{what}` entries ({int((~np.isfinite(values)).sum())} "
                                 "NaN or infinite values); every entry must be a finite number")
        self.staged = staged
        self.name = name
        self.constant = constant
        self.block = np.where(exists, block, 0.0)
        self.depth = np.where(staged.depth_exists(), depth, 0.0)
        self.unit, self.link = unit, link
        self.metadata = dict(metadata or {})

    @property
    def constant(self) -> float:
        """The part every arch pays; a finite number (checked on every assignment: a NaN here would
        make every prediction NaN and every solver answer meaningless)."""
        return self._constant

    @constant.setter
    def constant(self, value: Any) -> None:
        number = None
        if not isinstance(value, (bool, np.bool_, str, bytes)):
            try:
                number = float(value)  # numpy and torch scalars too
            except (TypeError, ValueError):
                number = None
        if number is None or not math.isfinite(number):
            raise ValueError(f"`constant` of table {self.name!r} must be a finite number, got {value!r}")
        self._constant = number

    # -- evaluation ----------------------------------------------------------------------------
    def inverse_link(self, additive: Any) -> Any:
        """The value of additive form(s) ``additive``: itself, or ``1 − exp(−additive)`` for ``"log_error"``."""
        return additive if self.link == "identity" else -np.expm1(-np.asarray(additive, dtype=np.float64))

    def predict_indices(self, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """Values for index arrays ``(..., S, D)`` configs and ``(..., S)`` depth indices → ``(...)``."""
        return self.inverse_link(self.additive_indices(configs, depths))

    def additive_indices(self, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """The additive form ``constant + Σ depth + Σ block`` (what the solvers optimise) → ``(...)``."""
        configs, depths = np.asarray(configs), np.asarray(depths)
        active = self.staged.active(depths) & (configs >= 0)
        per_block = np.take_along_axis(
            np.broadcast_to(self.block, configs.shape + (self.staged.num_configs,)), np.maximum(configs, 0)[..., None], -1
        )[..., 0]
        per_depth = np.take_along_axis(np.broadcast_to(self.depth, depths.shape + self.depth.shape[-1:]), depths[..., None], -1)[..., 0]
        return self.constant + per_depth.sum(-1) + np.where(active, per_block, 0.0).sum((-2, -1))

    def predict(self, arch: Mapping[str, Any]) -> float:
        """The value of one arch."""
        return float(self.predict_indices(*self.staged.indices(arch)))

    def predict_many(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``(N,)`` values of several archs."""
        return self.predict_indices(*self.staged.indices_many(archs))

    __call__ = predict

    def extreme(self, largest: bool = False, *, additive: bool = False) -> tuple[float, dict[str, Any]]:
        """The smallest (or largest) value any arch reaches, and an arch reaching it.

        Stages are independent once the shared decisions are fixed, so for each joint value of
        the shared decisions (none in most spaces) each stage picks its best depth with the best
        consistent config per active block (the link is increasing, so the additive form's
        extreme is the value's). ``additive=True`` returns the additive form's extreme value
        instead of the value's.
        """
        pick = np.max if largest else np.min
        arg = np.argmax if largest else np.argmin
        worst = -np.inf if largest else np.inf
        staged = self.staged
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        for assignment in staged.shared_assignments():
            block = np.where(staged.consistent_with(assignment), self.block, worst)
            configs = arg(block, -1)
            best_block = pick(block, -1)  # (S, D)
            total, depths = self.constant, np.zeros(staged.num_stages, dtype=np.int64)
            for s, st in enumerate(staged.stages):
                options = [self.depth[s, j] + best_block[s, :d].sum() for j, d in enumerate(st.depths)]
                depths[s] = int(arg(options))
                total += float(options[depths[s]])
            if best is None or (total > best[0] if largest else total < best[0]):
                best = (total, configs, depths)
        total, configs, depths = best
        return float(total if additive else self.inverse_link(total)), staged.to_arch(configs, depths)

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable, versioned description (structure included, for checking on load)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "unit": self.unit,
            "link": self.link,
            "constant": self.constant,
            "block": self.block.tolist(),
            "depth": self.depth.tolist(),
            "structure": _structure(self.staged),
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` as JSON, atomically (an existing file is replaced only once complete)."""
        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], staged: StagedSpace) -> "BilinearTable":
        """Rebuild from :meth:`to_dict`; ``staged`` must have the structure it was made for.

        Raises:
            ValueError: not a table dict, a missing or malformed field, another structure, or a
                non-finite value; the message names what is wrong.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"not a bilinear table: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"not a bilinear table (format {data.get('format')!r}, expected {FORMAT!r})")
        if data.get("version") not in (1, VERSION):
            raise ValueError(f"bilinear table version {data.get('version')!r} is not supported (this library reads 1 to {VERSION})")
        missing = [key for key in ("name", "unit", "constant", "block", "depth", "structure") if key not in data]
        if missing:
            raise ValueError(f"bilinear table {data.get('name')!r} is missing field(s) {missing} (truncated or edited by hand?)")
        if data["structure"] != _structure(staged):
            raise ValueError(f"table {data.get('name')!r} was made for another space than {staged!r}: "
                             f"{structure_difference(data['structure'], _structure(staged))}")
        metadata = data.get("metadata")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValueError(f"bilinear table {data['name']!r}: `metadata` must be a JSON object, got {type(metadata).__name__}")
        return cls(
            staged, data["constant"], data["block"], data["depth"],
            name=data["name"], unit=data["unit"], metadata=metadata, link=data.get("link", "identity"),
        )

    @classmethod
    def load(cls, path: str | Path, staged: StagedSpace) -> "BilinearTable":
        """Read a table written by :meth:`save`.

        Raises:
            OSError: the file cannot be read (missing, a directory, no permission); the message names it.
            ValueError: the file is not a valid table (not UTF-8 JSON, truncated, a missing or
                malformed field, another space's structure); the message names the file.
        """
        path = Path(path)
        data = read_json(path, "bilinear table file")
        try:
            return cls.from_dict(data, staged)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def __repr__(self) -> str:
        link = "" if self.link == "identity" else f", link={self.link!r}"
        return f"BilinearTable(name={self.name!r}, unit={self.unit!r}, constant={self.constant:.4g}{link}, staged={self.staged!r})"


def _float_array(values: Any, what: str, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{what}` of table {name!r} must be a rectangular array of numbers: {err}") from err


def _structure(staged: StagedSpace) -> list[dict[str, Any]]:
    # Round-tripped through JSON so tuples and lists compare equal.
    return json.loads(json.dumps([
        {"depth_label": st.depth_label, "depths": st.depths, "block_labels": st.block_labels, "configs": st.configs}
        for st in staged.stages
    ]))
