"""``ElasticBatchNormAct2d``: timm's ``BatchNormAct2d`` (batch norm, drop, activation) at an elastic width."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, largest
from lightning_nas.nn.norm import ElasticBatchNorm2d

__all__ = ["ElasticBatchNormAct2d"]


def _batch_norm_act_type() -> type | None:
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return BatchNormAct2d


class ElasticBatchNormAct2d(ElasticBatchNorm2d):
    """An :class:`ElasticBatchNorm2d` followed by a drop and an activation module, as timm's ``BatchNormAct2d``.

    Parameters and buffers keep ``BatchNormAct2d``'s names (``weight``, ``running_mean``, ...), and
    :meth:`freeze` gives back a timm ``BatchNormAct2d``, so an exported block has the layers and
    state-dict keys of the original. ``drop`` and ``act`` must map 0 to 0 (ReLU, SiLU, Hardswish,
    Identity...): in per-example mode the channels past a row's width are zero and must stay so.

    Args:
        num_features: int or ``Choice`` (the width ``Choice`` of the layer before it).
        eps: as in ``nn.BatchNorm2d``.
        momentum: as in ``nn.BatchNorm2d``.
        affine: as in ``nn.BatchNorm2d``.
        track_running_stats: as in ``nn.BatchNorm2d``.
        drop: applied after the norm (timm's ``drop``, usually ``nn.Identity``).
        act: applied last (timm's ``act``).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(
        self,
        num_features: int | Choice,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        drop: nn.Module | None = None,
        act: nn.Module | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.drop = nn.Identity() if drop is None else drop
        self.act = nn.Identity() if act is None else act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Module:
        plain = super().freeze(arch, export_child)
        batch_norm_act = _batch_norm_act_type()
        if batch_norm_act is None:  # pragma: no cover - timm is a dependency
            return nn.Sequential(plain, export_child(self.drop), export_child(self.act))
        frozen = batch_norm_act(
            plain.num_features, eps=self.eps, momentum=self.momentum, affine=self.affine,
            track_running_stats=self.track_running_stats, apply_act=False,
        )
        reference = self.weight if self.weight is not None else self.running_mean
        if reference is not None:
            frozen = frozen.to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            frozen.load_state_dict(plain.state_dict())
        frozen.drop = export_child(self.drop)
        frozen.act = export_child(self.act)
        return frozen

    @classmethod
    def from_batch_norm_act(cls, bn: nn.BatchNorm2d, *, num_features: int | Choice | None = None) -> "ElasticBatchNormAct2d":
        """An elastic copy of a timm ``BatchNormAct2d`` sharing its parameters, buffers, drop and act modules.

        Raises:
            ValueError: ``bn`` is not exactly a timm ``BatchNormAct2d``, or the largest
                ``num_features`` candidate is not ``bn``'s width.
        """
        batch_norm_act = _batch_norm_act_type()
        if batch_norm_act is None or type(bn) is not batch_norm_act:
            raise ValueError(f"expected a timm BatchNormAct2d, got {type(bn).__name__}")
        num_features = bn.num_features if num_features is None else num_features
        if largest(num_features) != bn.num_features:
            raise ValueError(f"the largest num_features candidate must be {bn.num_features}, got {largest(num_features)}")
        elastic = cls(num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, drop=bn.drop, act=bn.act)
        for name in ("weight", "bias"):
            if getattr(bn, name) is not None:
                setattr(elastic, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(bn, name) is not None:
                elastic.register_buffer(name, getattr(bn, name))
        return elastic
