"""Architecture selection from a relaxed supernet: by magnitude (argmax α) or by perturbation (DARTS-PT).

Magnitude selection takes, on every edge, the operation of largest expected weight and, for a
DARTS node, the incoming edges whose strongest operation weighs most. DARTS-PT instead measures an
operation's strength as the held-out accuracy *lost* when only that operation is masked out of its
edge (weight 0, no renormalising), keeps the one whose removal hurts most, and decides a node's
inputs by removing, one at a time, the edge whose removal leaves the highest accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.differentiable.bilevel import preserved_buffers
from lightning_nas.differentiable.relaxation import SoftmaxRelaxation
from lightning_nas.nn.input_choice import InputChoice
from lightning_nas.nn.op_choice import OpChoice

__all__ = [
    "AccuracyFn",
    "count_correct",
    "input_edges",
    "magnitude_selection",
    "perturbation_op_scores",
    "select_inputs_by_perturbation",
    "select_op_by_perturbation",
    "supernet_accuracy",
    "supernet_correct",
]

#: ``accuracy_fn(model, batch) -> (correct, count)`` of one batch.
AccuracyFn = Callable[[nn.Module, Any], tuple[Tensor, int]]


def count_correct(model: nn.Module, batch: Any) -> tuple[Tensor, int]:
    """Default: ``batch = (inputs, targets, ...)``; correct argmax predictions of ``model(inputs)``."""
    inputs, targets = batch[0], batch[1]
    return (model(inputs).argmax(-1) == targets).sum(), int(targets.shape[0])


def supernet_correct(model: nn.Module, batches: Iterable[Any], accuracy_fn: AccuracyFn = count_correct) -> tuple[float, int]:
    """``(correct, count)`` of ``model`` over ``batches`` in its current mode, without gradients.

    Running BatchNorm statistics are restored afterwards (DARTS-PT evaluates in train mode, with
    batch statistics, which would otherwise drift during the measurements). Counts, not a ratio,
    so shards measured on different ranks add up exactly.
    """
    correct, total = 0.0, 0
    with torch.no_grad(), preserved_buffers(model):
        for batch in batches:
            c, n = accuracy_fn(model, batch)
            correct += float(c)
            total += n
    return correct, total


def supernet_accuracy(model: nn.Module, batches: Iterable[Any], accuracy_fn: AccuracyFn = count_correct) -> float:
    """Accuracy of ``model`` over ``batches`` (see :func:`supernet_correct`)."""
    correct, total = supernet_correct(model, batches, accuracy_fn)
    if total == 0:
        raise ValueError("`batches` is empty: nothing to measure the accuracy on")
    return correct / total


def input_edges(relaxation: SoftmaxRelaxation) -> dict[str, list[str]]:
    """``{input label: [op label of the edge feeding input i, ...]}`` for nodes built as DARTS cells.

    A module holding an ``InputChoice`` as ``inputs`` and its ``OpChoice`` edges as ``edges`` (one
    per input, like :class:`~lightning_nas.spaces.darts.CellNode`) defines the pairing.
    """
    pairs: dict[str, list[str]] = {}
    for m in relaxation.supernet.modules():
        inputs, edges = getattr(m, "inputs", None), getattr(m, "edges", None)
        if isinstance(inputs, InputChoice) and isinstance(edges, nn.ModuleList) and all(isinstance(e, OpChoice) for e in edges):
            if len(edges) == inputs.n_candidates:
                pairs.setdefault(inputs.label, [e.label for e in edges])
    return pairs


def _strongest(weights: Sequence[float], ops: Sequence[Any], exclude: Sequence[Any]) -> int:
    allowed = [k for k, op in enumerate(ops) if op not in exclude] or list(range(len(ops)))
    return max(allowed, key=lambda k: weights[k])


def magnitude_selection(relaxation: SoftmaxRelaxation, *, exclude: Sequence[Any] = ("none",)) -> dict[str, Any]:
    """DARTS's selection: argmax expected weight per edge (ignoring ``exclude`` ops unless nothing else is left).

    Each DARTS node keeps its ``n_chosen`` incoming edges whose strongest non-excluded operation
    weighs most; inputs fixed by topology selection are kept as fixed. Other decisions of the
    supernet keep their active (or default) value.

    Returns:
        A complete, valid architecture dict of the supernet.

    Raises:
        FloatingPointError: a label's weights (α) hold NaN or infinite values: their argmax means nothing.
    """
    supernet = relaxation.supernet
    arch = dict(supernet.space.default() if supernet.per_example else supernet.active_arch)
    strength: dict[str, float] = {}
    for label in relaxation.op_labels:
        weights, ops = relaxation.expected_weights(label).tolist(), relaxation.ops(label)
        if not all(math.isfinite(w) for w in weights):
            raise FloatingPointError(
                f"the mixing weights of {label!r} are not finite ({weights}): α diverged (a NaN loss?), so no "
                "operation can be selected from them"
            )
        best = _strongest(weights, ops, exclude)
        arch[label] = ops[best]
        strength[label] = weights[best]
    edges = input_edges(relaxation)
    for m in supernet.mutables():
        if not isinstance(m, InputChoice) or m.label not in relaxation.input_labels:
            continue
        if m.label in relaxation.fixed_inputs:
            chosen = relaxation.fixed_inputs[m.label]
        elif m.label in edges:
            ranked = sorted(range(m.n_candidates), key=lambda i: -strength[edges[m.label][i]])
            chosen = tuple(sorted(ranked[: m.n_chosen]))
        else:
            continue
        arch[m.label] = chosen[0] if m.n_chosen == 1 else chosen
    return supernet.space.validate(arch)


def _check_scores(label: str, scores: dict[Any, float]) -> None:
    bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
    if bad:
        # min/max over NaN depends on the order of the candidates: the decision would be arbitrary.
        raise FloatingPointError(f"perturbation scores of {label!r} are not finite: {bad}; `evaluate` must return a finite score")


def perturbation_op_scores(relaxation: SoftmaxRelaxation, label: str, evaluate: Callable[[], float]) -> dict[Any, float]:
    """``{op: evaluate()}`` with ``op`` masked out of edge ``label`` (the other weights unchanged)."""
    scores = {}
    for op in relaxation.available_ops(label):
        with relaxation.perturbed(label, op):
            scores[op] = float(evaluate())
    return scores


def select_op_by_perturbation(
    relaxation: SoftmaxRelaxation, label: str, evaluate: Callable[[], float]
) -> tuple[Any, dict[Any, float]]:
    """DARTS-PT's operation decision: the op whose removal leaves the lowest score; the edge is fixed to it.

    Returns:
        ``(op, scores)`` with the score of every masked op.
    """
    scores = perturbation_op_scores(relaxation, label, evaluate)
    _check_scores(label, scores)
    op = min(scores, key=lambda o: (scores[o], relaxation.ops(label).index(o)))
    relaxation.fix(label, op)
    return op, scores


def select_inputs_by_perturbation(
    relaxation: SoftmaxRelaxation, label: str, n_chosen: int, evaluate: Callable[[], float]
) -> tuple[tuple[int, ...], list[dict[int, float]]]:
    """DARTS-PT's topology decision: repeatedly remove the input whose removal leaves the highest score.

    Returns:
        ``(kept inputs, scores of each round)``; the input choice is fixed to the kept inputs.
    """
    kept = [i for i, m in enumerate(relaxation._edges(label).tolist()) if m != 0]
    rounds = []
    while len(kept) > n_chosen:
        scores = {}
        for i in kept:
            with relaxation.inputs_removed(label, i):
                scores[i] = float(evaluate())
        rounds.append(scores)
        _check_scores(label, scores)
        drop = max(kept, key=lambda i: (scores[i], -i))
        kept.remove(drop)
        relaxation.fix_inputs(label, tuple(kept))
    relaxation.fix_inputs(label, tuple(kept))
    return tuple(kept), rounds
