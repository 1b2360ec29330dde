"""``SearchSpace``: the ordered decisions of a supernet, with sampling, validation and encoding.

An architecture is a plain dict ``{label: value}`` (JSON-serialisable; tuple values come back from
JSON as lists and are accepted as such). Every random draw takes a seed or a ``torch.Generator``.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_nas.nn.choice import candidate_key

__all__ = ["Decision", "SearchSpace", "make_generator"]


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A ``torch.Generator`` from a seed (``None`` draws a fresh one from torch's global RNG)."""
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an int, a torch.Generator or None, got {seed!r}")
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Decision:
    """One categorical decision: its label, candidate values (in order) and default value."""

    label: str
    values: tuple[Any, ...]
    default: Any

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"a decision's `label` must be a non-empty string, got {self.label!r}")
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence) or not self.values:
            raise ValueError(f"`values` of decision {self.label!r} must be a non-empty sequence of candidates, got {self.values!r}")
        object.__setattr__(self, "values", tuple(self.values))
        try:
            self.index(self.default)
        except ValueError:
            raise ValueError(f"`default` {self.default!r} of decision {self.label!r} is not one of its candidates "
                             f"{[_plain(v) for v in self.values]!r}") from None

    def index(self, value: Any) -> int:
        """Position of ``value``; ``ValueError`` naming the label and the allowed values otherwise."""
        key = candidate_key(value)
        try:
            # By key, not ==: True == 1 in Python, but True is not the candidate 1.
            return next(i for i, v in enumerate(self.values) if candidate_key(v) == key)
        except (StopIteration, TypeError):
            raise ValueError(
                f"architecture value {value!r} for label {self.label!r} is not a candidate; allowed values: "
                f"{[_plain(v) for v in self.values]!r}"
            ) from None

    def is_numeric(self) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)


def _check_count(n: Any) -> None:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
        raise ValueError(f"`n` (the number of draws) must be a non-negative int, got {n!r}")


def _candidate_index(index: Any, n_values: int, name: str) -> int:
    """``index`` as an int in ``[0, n_values)``; a float, bool or out-of-range index is refused, not truncated or wrapped."""
    if isinstance(index, Tensor):
        if index.numel() != 1 or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(f"`{name}` must be one integer candidate index, got a {index.dtype} tensor of shape {tuple(index.shape)}")
        index = index.item()
    if not isinstance(index, numbers.Integral) or isinstance(index, bool) or not 0 <= index < n_values:
        raise ValueError(f"`{name}` must be an integer candidate index in [0, {n_values}), got {index!r}")
    return int(index)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


class SearchSpace:
    """Ordered decisions. Iteration order is the order of discovery in the module tree.

    Args:
        decisions: the decisions, labels unique.
    """

    def __init__(self, decisions: Sequence[Decision]) -> None:
        labels = [d.label for d in decisions]
        if len(set(labels)) != len(labels):
            raise ValueError(f"decision labels must be unique, got {labels!r}")
        self.decisions: tuple[Decision, ...] = tuple(decisions)
        self._by_label = {d.label: d for d in self.decisions}
        self._offsets = list(itertools.accumulate([0] + [len(d.values) for d in self.decisions]))

    # -- structure ---------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return [d.label for d in self.decisions]

    def __len__(self) -> int:
        return len(self.decisions)

    def __iter__(self) -> Iterator[Decision]:
        return iter(self.decisions)

    def __getitem__(self, label: str) -> Decision:
        try:
            return self._by_label[label]
        except KeyError:
            raise KeyError(f"unknown label {label!r}; labels: {self.labels!r}") from None

    @property
    def size(self) -> int:
        """Number of architectures (the product of the candidate counts)."""
        return math.prod(len(d.values) for d in self.decisions)

    @property
    def encoding_size(self) -> int:
        """Length of :meth:`encode`'s vector: the total number of candidates."""
        return self._offsets[-1]

    def encoding_names(self) -> list[tuple[str, Any]]:
        """``(label, value)`` of each position of the one-hot encoding."""
        return [(d.label, v) for d in self.decisions for v in d.values]

    def __repr__(self) -> str:
        return f"SearchSpace({len(self)} decisions, size={self.size})"

    # -- validation --------------------------------------------------------------------------
    def validate(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``arch`` and return it in canonical form.

        Raises:
            ValueError: for an unknown label, a missing label, or a value that is not a candidate,
                naming the label and the allowed values.
        """
        if not isinstance(arch, Mapping):
            raise ValueError(f"an architecture must be a dict {{label: value}}, got {type(arch).__name__}")
        unknown = [k for k in arch if k not in self._by_label]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown!r} in architecture; labels of this space: {self.labels!r}")
        out = {}
        for d in self.decisions:
            if d.label not in arch:
                raise ValueError(
                    f"architecture is missing label {d.label!r}; allowed values: {[_plain(v) for v in d.values]!r}"
                )
            out[d.label] = d.values[d.index(arch[d.label])]
        return out

    def contains(self, arch: Mapping[str, Any]) -> bool:
        """Whether ``arch`` is a valid architecture of this space."""
        try:
            self.validate(arch)
        except ValueError:
            return False
        return True

    # -- named architectures -----------------------------------------------------------------
    def default(self) -> dict[str, Any]:
        """The architecture of every decision's default value."""
        return {d.label: d.default for d in self.decisions}

    def largest(self) -> dict[str, Any]:
        """The largest value of each numeric decision, the last candidate of the others."""
        return {d.label: max(d.values) if d.is_numeric() else d.values[-1] for d in self.decisions}

    def smallest(self) -> dict[str, Any]:
        """The smallest value of each numeric decision, the first candidate of the others."""
        return {d.label: min(d.values) if d.is_numeric() else d.values[0] for d in self.decisions}

    # -- indices, sampling, enumeration ------------------------------------------------------
    def indices(self, arch: Mapping[str, Any]) -> dict[str, int]:
        """``{label: candidate index}`` of a valid architecture."""
        arch = self.validate(arch)
        return {d.label: d.index(arch[d.label]) for d in self.decisions}

    def from_indices(self, indices: Mapping[str, int]) -> dict[str, Any]:
        """The architecture with the given candidate index per label.

        Raises:
            ValueError: a label is missing, or an index is not an integer in ``[0, number of candidates)``.
        """
        if not isinstance(indices, Mapping):
            raise ValueError(f"`indices` must be a dict {{label: candidate index}}, got {type(indices).__name__}")
        arch = {}
        for d in self.decisions:
            if d.label not in indices:
                raise ValueError(f"`indices` is missing label {d.label!r}; labels of this space: {self.labels!r}")
            arch[d.label] = d.values[_candidate_index(indices[d.label], len(d.values), f"indices[{d.label!r}]")]
        return arch

    def sample_indices(self, n: int, seed: int | torch.Generator | None = None) -> dict[str, Tensor]:
        """``n`` independent uniform draws as ``{label: LongTensor (n,)}`` of candidate indices."""
        _check_count(n)
        generator = make_generator(seed)
        return {d.label: torch.randint(len(d.values), (n,), generator=generator) for d in self.decisions}

    def sample(self, seed: int | torch.Generator | None = None) -> dict[str, Any]:
        """One architecture drawn uniformly at random."""
        draw = self.sample_indices(1, seed)
        return {label: self[label].values[int(idx[0])] for label, idx in draw.items()}

    def sample_many(self, n: int, seed: int | torch.Generator | None = None) -> list[dict[str, Any]]:
        """``n`` architectures drawn uniformly at random (with replacement)."""
        _check_count(n)
        draw = self.sample_indices(n, seed)
        return [self.from_indices({label: idx[i] for label, idx in draw.items()}) for i in range(n)]

    def enumerate(self, limit: int = 1_000_000) -> Iterator[dict[str, Any]]:
        """Every architecture, in lexicographic order of candidate indices.

        Raises:
            ValueError: when the space has more than ``limit`` architectures.
        """
        if not isinstance(limit, numbers.Integral) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"`limit` must be a non-negative int, got {limit!r}")
        if self.size > limit:
            raise ValueError(f"the space has {self.size} architectures, more than `limit`={limit}; sample instead")
        for combo in itertools.product(*(d.values for d in self.decisions)):
            yield dict(zip(self.labels, combo))

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, arch: Mapping[str, Any]) -> Tensor:
        """One-hot encoding, ``FloatTensor (encoding_size,)``, in decision order then candidate order."""
        indices = self.indices(arch)
        vector = torch.zeros(self.encoding_size)
        for offset, d in zip(self._offsets, self.decisions):
            vector[offset + indices[d.label]] = 1.0
        return vector

    def encode_many(self, archs: Sequence[Mapping[str, Any]]) -> Tensor:
        """Stacked encodings, ``FloatTensor (N, encoding_size)``."""
        if not archs:
            return torch.zeros(0, self.encoding_size)
        return torch.stack([self.encode(a) for a in archs])

    def decode(self, vector: Tensor | Sequence[float]) -> dict[str, Any]:
        """The architecture whose encoding has its largest entry in each decision's block.

        Raises:
            ValueError: ``vector`` is not a real vector of ``encoding_size`` finite numbers (a NaN has no
                argmax worth decoding: it is usually a diverged predictor).
        """
        try:
            vector = torch.as_tensor(vector)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"`vector` must be a sequence or tensor of {self.encoding_size} real numbers: {err}") from None
        if vector.shape != (self.encoding_size,):
            raise ValueError(f"`vector` must have shape ({self.encoding_size},), got {tuple(vector.shape)}")
        if vector.dtype == torch.bool or vector.is_complex():
            raise ValueError(f"`vector` must hold real numbers, got dtype {vector.dtype}")
        if vector.is_floating_point() and not bool(torch.isfinite(vector).all()):
            bad = torch.nonzero(~torch.isfinite(vector)).flatten().tolist()
            names = [self.encoding_names()[i] for i in bad[:3]]
            raise ValueError(f"`vector` must be finite, got {vector[bad[0]].item()} at position(s) {bad} ((label, value): {names})")
        return {
            d.label: d.values[int(vector[start:end].argmax())]
            for d, start, end in zip(self.decisions, self._offsets, self._offsets[1:])
        }
