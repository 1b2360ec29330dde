"""The thesis's collapse diagnostic: how much more weight skip connections get than convolutions.

``skip gap = mean over edges of (w_skip − mean of the edge's conv weights)`` (thesis Fig. 2.3). It
rises as the supernet's validation accuracy improves (Proposition 1): the supernet's optimum favours
skip connections, which misleads magnitude selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["CONV_OPS", "skip_gap"]

#: Convolutions of the DARTS and NB201 operation sets.
CONV_OPS: tuple[str, ...] = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "nor_conv_1x1", "nor_conv_3x3")


def skip_gap(
    weights: Mapping[str, Mapping[str, float]], *, skip: str = "skip_connect", conv: Sequence[str] = CONV_OPS
) -> float:
    """Mean ``w_skip − mean(w_conv)`` over the edges offering both a skip connection and a convolution.

    Args:
        weights: ``{label: {op: weight}}`` (a :class:`~lightning_nas.callbacks.darts.DartsSearch`
            history entry's ``"weights"``).
        skip: the skip operation's name.
        conv: names counted as convolutions.

    Raises:
        ValueError: when no edge offers both.
    """
    gaps = []
    for ops in weights.values():
        convs = [w for op, w in ops.items() if op in conv]
        if skip in ops and convs:
            gaps.append(ops[skip] - sum(convs) / len(convs))
    if not gaps:
        raise ValueError(f"no edge offers both {skip!r} and a convolution from {list(conv)}")
    return sum(gaps) / len(gaps)
