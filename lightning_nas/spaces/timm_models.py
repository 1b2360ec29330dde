"""Any timm model as a search space: ``create_space("timm", model_name="mobilenetv3_large_100")``.

The model is built by ``timm.create_model`` (random weights unless ``pretrained=True``, which
downloads them) and made searchable in place by :func:`~lightning_nas.nn.mutate` with a rules
preset (:data:`lightning_nas.nn.rules.PRESETS`), keeping its weights as the largest subnet. Being a
registered space, it is reachable by name wherever a space is: ``lightning-nas fit
--model.space timm --model.space_kwargs '{model_name: mobilenetv3_small_050}'``, ``lightning-nas
profile --space timm --space-kwargs '{"model_name": ...}'``, ``select`` and ``export``.
"""

from __future__ import annotations

from typing import Any

from lightning_nas.spaces.registry import register_space
from lightning_nas.supernet import Supernet

__all__ = ["timm_supernet"]


@register_space("timm")
def timm_supernet(
    model_name: str,
    *,
    preset: str = "binas",
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: bool = False,
    **model_kwargs: Any,
) -> Supernet:
    """``Supernet(mutate(timm.create_model(model_name, ...), preset=preset))``.

    Args:
        model_name: a timm model name (``timm.list_models()``), e.g. ``"mobilenetv3_large_100"``.
        preset: the :func:`~lightning_nas.nn.mutate` rules preset (``"binas"``: elastic kernel,
            expansion, squeeze-excitation and depth of inverted-residual blocks).
        num_classes: classifier outputs.
        in_chans: input channels.
        pretrained: load timm's pretrained weights (needs network access or timm's cache).
        **model_kwargs: more keyword arguments of ``timm.create_model``.

    Raises:
        ValueError: an unknown model name or preset, or a model the preset finds nothing to search in.
    """
    import timm

    from lightning_nas.nn import mutate
    from lightning_nas.nn.rules import PRESETS

    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"`model_name` must be a timm model name such as 'mobilenetv3_large_100', got {model_name!r}")
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}")
    if not timm.is_model(model_name):
        raise ValueError(f"`model_name` {model_name!r} is not a timm model; see timm.list_models('*{model_name[:8]}*')")
    model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    supernet = Supernet(mutate(model, preset=preset))
    if not len(supernet.space):
        raise ValueError(f"the {preset!r} preset found nothing to search in timm's {model_name!r}; write rules for it (lightning_nas.nn.rules)")
    return supernet
