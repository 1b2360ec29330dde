"""Freeze an architecture of a supernet into a plain network with inherited (sliced) weights."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from lightning_nas.nn.choice import Choice, Mutable
from lightning_nas.nn.static import FixedValue

__all__ = ["export_subnet"]


def export_subnet(module: nn.Module, arch: dict[str, Any]) -> nn.Module:
    """A copy of ``module`` with every mutable replaced by its static equivalent under ``arch``.

    Only the chosen path is copied: unchosen candidates and blocks past a chosen depth are never
    touched. Every mutable is swapped through ``copy.deepcopy``'s memo, so the exported module is
    the user's own classes with ``torch.nn`` layers where the mutables were, wherever the mutables
    were referenced from.

    Args:
        module: a module tree whose choices are all labelled (as inside a ``Supernet``).
        arch: a complete, validated architecture.

    Returns:
        A new module; parameters are copies, so training it leaves the supernet untouched.
    """
    memo: dict[int, Any] = {}

    def export_child(child: nn.Module) -> nn.Module:
        prepare(child)
        return copy.deepcopy(child, memo)

    def prepare(m: nn.Module) -> None:
        if id(m) in memo:
            return
        if isinstance(m, Mutable):
            # New layers start in train mode: give them the mutable's mode.
            memo[id(m)] = m.freeze(arch, export_child).train(m.training)
            return
        if isinstance(m, Choice):
            memo[id(m)] = FixedValue(arch[m.label], m.label).train(m.training)
            return
        for child in m.children():
            prepare(child)

    return export_child(module)
