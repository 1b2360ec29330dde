"""Rules for :func:`~lightning_nas.nn.mutate`: existing transformers become AutoFormer-style search spaces.

The rules below decorate the transformer *instances* you already have, timm Vision Transformers
(``vit_tiny_patch16_224``, ``deit_tiny_patch16_224``, any ``VisionTransformer`` of timm ``Block`` s)
and Hugging Face ``transformers`` GPT-2 and BERT models, without changing their classes or their
``state_dict`` keys:

======================  ======================================================  ==========================================
rule                    makes                                                   label
======================  ======================================================  ==========================================
:func:`elastic_heads`   the number of attention heads of each layer (a prefix)  ``{attention}.num_heads``
:func:`elastic_mlp`     the hidden width of each feed-forward block (a prefix)  ``{mlp}.hidden_features`` (timm),
                                                                                ``{mlp}.n_inner`` (GPT-2),
                                                                                ``{layer}.intermediate_size`` (BERT)
:func:`elastic_layers`  the depth (the first ``n`` layers) or one on/off         ``{layers}.depth`` or ``{layers}.{i}.keep``
                        decision per layer ("skip any layer")
:func:`autoformer`      all three (``mutate(model, preset="autoformer")``)      (one rule)
======================  ======================================================  ==========================================

Every decision defaults to the original model, and at that default the supernet runs the
original modules' own ``forward`` code on the original tensors: it computes exactly (bit for bit)
what the model computed, in train and eval mode. A smaller architecture runs the same code on
prefixes of the weights (see :class:`SlicedModule`). Export gives the model's own classes back
(timm ``VisionTransformer`` / ``Attention`` / ``Mlp``, ``GPT2LMHeadModel`` / ``GPT2Attention`` /
``Conv1D``, ``BertModel`` / ``BertLayer`` ...) holding plain sliced ``nn.Linear`` / ``Conv1D`` layers
with the attributes that describe them (``num_heads``, ``split_size``, ``nf``...), dropped layers
removed and ``layer_idx`` renumbered. A Hugging Face model's exported ``config`` describes the
chosen architecture (see :func:`elastic_layers`). Example::

    from lightning_nas import Supernet, mutate
    vit = Supernet(mutate(timm.create_model("deit_tiny_patch16_224", img_size=32), preset="autoformer"))
    gpt = Supernet(mutate(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4)), preset="autoformer"))
    small = gpt.export(gpt.space.smallest())          # a GPT2LMHeadModel
    small.config.layer_num_heads, small.config.n_layer

``transformers`` is optional (``pip install lightning-nas[transformers]``): these rules recognise its
classes by name and never import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_nas.nn.choice import Choice, Mutable, largest, value_in
from lightning_nas.nn.elastic_size import active_size, size_mask
from lightning_nas.nn.mutate import Rule
from lightning_nas.nn.rules import _FirstOf, _replace_inside, _shallow_copy, make_divisible

__all__ = [
    "ElasticLayers",
    "SlicedDim",
    "SlicedModule",
    "TRANSFORMER_PRESETS",
    "autoformer",
    "elastic_heads",
    "elastic_layers",
    "elastic_mlp",
]

Where = Callable[[str, nn.Module], bool]
_DEPTH_MODES = ("prefix", "skip", None)


def _check_where(where: Any) -> None:
    if where is not None and not callable(where):
        raise ValueError(f"`where` must be callable(path, module) -> bool or None, got {where!r}")


# -- which module is which --------------------------------------------------------------------------

# (class module prefix, class name) -> kind. Exact classes only: a subclass may compute differently.
_KINDS = {
    ("timm.", "Attention"): "timm_attention",
    ("timm.", "Mlp"): "timm_mlp",
    ("timm.", "Block"): "timm_block",
    ("timm.", "ResPostBlock"): "timm_block",
    ("transformers.models.gpt2.", "GPT2Attention"): "gpt2_attention",
    ("transformers.models.gpt2.", "GPT2MLP"): "gpt2_mlp",
    ("transformers.models.gpt2.", "GPT2Block"): "gpt2_block",
    ("transformers.models.bert.", "BertAttention"): "bert_attention",
    ("transformers.models.bert.", "BertLayer"): "bert_layer",
}


def _kind(module: nn.Module) -> str | None:
    cls = type(module)
    return next((kind for (prefix, name), kind in _KINDS.items() if cls.__name__ == name and cls.__module__.startswith(prefix)), None)


def _is_conv1d(layer: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): a linear layer with a transposed ``(in, out)`` weight."""
    cls = type(layer)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


def _axes(layer: nn.Module) -> tuple[int, int]:
    """``(output axis, input axis)`` of a layer's weight."""
    return (1, 0) if _is_conv1d(layer) else (0, 1)


def _in_out(layer: nn.Module) -> tuple[int, int]:
    out_axis, in_axis = _axes(layer)
    return layer.weight.shape[in_axis], layer.weight.shape[out_axis]


# -- slicing layers ---------------------------------------------------------------------------------


def _group_prefix(t: Tensor, axis: int, groups: int, units: int, unit: int, keep: int) -> Tensor:
    """The first ``keep`` of ``units`` units (``unit`` entries each) in each of ``groups`` groups along ``axis``."""
    if keep == units:
        return t
    moved = t.movedim(axis, 0)
    rest = moved.shape[1:]
    cut = moved.reshape(groups, units, unit, *rest)[:, :keep].reshape(groups * keep * unit, *rest)
    return cut.movedim(0, axis)


def _sliced_layer(layer: nn.Module, *, out: tuple[int, int, int, int] | None, in_size: int | None, static: bool) -> nn.Module:
    """A copy of ``layer`` (an ``nn.Linear`` or a ``Conv1D``) using a prefix of its outputs and/or inputs.

    Args:
        layer: the layer (left untouched).
        out: ``(groups, units, unit, keep)``: keep the first ``keep`` units of each group of outputs.
        in_size: keep the first ``in_size`` inputs.
        static: copy the sliced tensors into new parameters (export); otherwise the copy holds
            slices of ``layer``'s parameters, so gradients flow to them (a forward pass).
    """
    out_axis, in_axis = _axes(layer)
    weight, bias = layer.weight, layer.bias
    if out is not None:
        weight = _group_prefix(weight, out_axis, *out)
        bias = None if bias is None else _group_prefix(bias, 0, *out)
    if in_size is not None and in_size != weight.shape[in_axis]:
        weight = weight.narrow(in_axis, 0, in_size)
    # Contiguous in both the supernet and the export: the same memory layout takes the same kernel,
    # so the two compute bit-identical results.
    weight, bias = weight.contiguous(), None if bias is None else bias.contiguous()
    if static:
        weight = nn.Parameter(weight.detach().clone(), requires_grad=layer.weight.requires_grad)
        bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=layer.bias.requires_grad)
    new = _shallow_copy(layer)
    new._parameters["weight"] = weight
    new._parameters["bias"] = bias
    if _is_conv1d(layer):
        new.nx, new.nf = weight.shape
    else:
        new.out_features, new.in_features = weight.shape
    return new


class _MaskedInput(nn.Module):
    """Per-example mode: zero each row's inputs past its own width, then run ``layer``."""

    def __init__(self, layer: nn.Module, widths: Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.widths = widths

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] != self.widths.shape[0]:
            raise ValueError(f"per-example mode: {self.widths.shape[0]} rows are active here, but the input has shape {tuple(x.shape)}")
        mask = size_mask(self.widths, x.shape[-1], x.dtype)
        return self.layer(x * mask.view(mask.shape[0], *([1] * (x.dim() - 2)), x.shape[-1]))


def _permuted_layer(layer: nn.Module, axis: int, index: Tensor, bias: bool) -> nn.Module:
    """A copy of ``layer`` with new parameters permuted along ``axis`` of the weight (and the bias if ``bias``)."""
    new = _shallow_copy(layer)
    for name, dim in (("weight", axis), ("bias", 0)):
        t = layer._parameters.get(name)
        if t is None or (name == "bias" and not bias):
            continue
        new._parameters[name] = nn.Parameter(t.detach().index_select(dim, index.to(t.device)), requires_grad=t.requires_grad)
    return new


# -- the sliced module ----------------------------------------------------------------------------------


class SlicedDim(NamedTuple):
    """One elastic dimension of a :class:`SlicedModule` (attention heads, MLP hidden neurons).

    Attributes:
        decision: the key of its ``Choice`` in the module's ``decisions`` (candidates: unit counts).
        unit: entries per unit (the head dimension for heads, 1 for neurons).
        writers: ``{sub-path: groups}``: layers whose outputs are ``groups`` blocks of the units
            (``3`` for a fused Q/K/V projection), each cut to its first units.
        readers: sub-paths of the layers reading the units (their inputs are cut).
        attributes: ``{sub-path: {name: multiple}}``: attributes set to ``multiple * units`` on
            the module at that path (``""``: the module itself), e.g. ``{"": {"num_heads": 1}}``.
    """

    decision: str
    unit: int
    writers: Mapping[str, int]
    readers: tuple[str, ...]
    attributes: Mapping[str, Mapping[str, int]]


class SlicedModule(Mutable):
    """An existing module run at a prefix of some of its dimensions, by its own ``forward`` code.

    ``SlicedModule(module, dims, decisions)`` holds ``module``'s sub-modules, parameters and
    buffers under their own names (so the ``state_dict`` keys do not change) and its other
    attributes. Each call builds a shallow copy of ``module`` (same class) whose writer and reader
    layers are prefixes of the shared weights for the active sizes and whose size attributes
    (``num_heads``, ``split_size``...) say so, and calls it. At the largest sizes the copy holds
    the original layers, so the result is exactly ``module(*args, **kwargs)``.

    In per-example mode the batch runs at the largest size of its rows, and each row's units past
    its own count are zeroed at the input of the reader layers: heads and hidden neurons are
    independent until then, so every row computes exactly its own subnet (dropout aside).

    Export gives an instance of ``module``'s class with plain sliced ``nn.Linear`` / ``Conv1D``
    layers (new parameters) and its nested mutables exported.

    Args:
        module: the module (a timm ``Attention``, a Hugging Face ``GPT2MLP``...); it is not modified.
        dims: the elastic dimensions.
        decisions: ``{name: Choice}`` of unit counts; the largest candidate of each must be the
            module's own count.

    Attributes:
        decisions: an ``nn.ModuleDict`` of the ``Choice`` s.
    """

    def __init__(self, module: nn.Module, dims: Sequence[SlicedDim], decisions: Mapping[str, Choice]) -> None:
        super().__init__()
        if not isinstance(module, nn.Module) or isinstance(module, Mutable):
            raise ValueError(f"SlicedModule: `module` must be a plain nn.Module, got {type(module).__name__}")
        if "decisions" in module._modules:
            raise ValueError(f"SlicedModule: {type(module).__name__} has a sub-module named 'decisions', the name SlicedModule keeps its choices under")
        template = _shallow_copy(module)
        template._modules, template._parameters, template._buffers = {}, {}, {}
        object.__setattr__(self, "_template", template)  # the class and plain attributes to rebuild `module` from
        self._module_type = type(module).__name__
        for name, child in module._modules.items():
            self.add_module(name, child)
        for name, p in module._parameters.items():
            self.register_parameter(name, p)
        for name, b in module._buffers.items():
            self.register_buffer(name, b, persistent=name not in module._non_persistent_buffers_set)
        self.decisions = nn.ModuleDict(dict(decisions))
        self.dims = tuple(dims)
        self.training = module.training
        for dim in self.dims:
            if dim.decision not in self.decisions:
                raise ValueError(f"SlicedModule: no decision named {dim.decision!r} (have {sorted(self.decisions)!r})")
            units = largest(self.decisions[dim.decision])
            for sub, groups in dim.writers.items():
                _, n_out = _in_out(self._layer(sub))
                if n_out != groups * units * dim.unit:
                    raise ValueError(f"SlicedModule: {sub!r} has {n_out} outputs, not {groups} x {units} x {dim.unit}")
            for sub in dim.readers:
                n_in, _ = _in_out(self._layer(sub))
                if n_in != units * dim.unit:
                    raise ValueError(f"SlicedModule: {sub!r} has {n_in} inputs, not {units} x {dim.unit}")

    def _layer(self, sub: str) -> nn.Module:
        layer = self.get_submodule(sub)
        if type(layer) is not nn.Linear and not _is_conv1d(layer):
            raise ValueError(f"SlicedModule: {sub!r} is a {type(layer).__name__}; only nn.Linear and Hugging Face Conv1D layers can be sliced")
        return layer

    # -- building the module to run ------------------------------------------------------------------
    def _build(self, sizes: Sequence[tuple[int, Tensor | None]], static: bool) -> nn.Module:
        replacements: dict[str, nn.Module] = {}
        attributes: dict[str, dict[str, Any]] = {}
        for dim, (size, per_row) in zip(self.dims, sizes):
            units = largest(self.decisions[dim.decision])
            if size == units and per_row is None:
                continue  # the original layers, untouched
            for sub, groups in dim.writers.items():
                replacements[sub] = _sliced_layer(self._layer(sub), out=(groups, units, dim.unit, size), in_size=None, static=static)
            for sub in dim.readers:
                layer = _sliced_layer(self._layer(sub), out=None, in_size=size * dim.unit, static=static)
                replacements[sub] = layer if per_row is None else _MaskedInput(layer, per_row * dim.unit)
            for path, names in dim.attributes.items():
                attributes.setdefault(path, {}).update({name: size * multiple for name, multiple in names.items()})
        base = _shallow_copy(self._template)
        base._modules = {k: v for k, v in self._modules.items() if k != "decisions"}
        base._parameters, base._buffers = dict(self._parameters), dict(self._buffers)
        base.training = self.training
        return _replace_inside(base, replacements, attributes) if replacements or attributes else base

    def _device(self) -> torch.device:
        return next(iter(self.parameters())).device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        device = self._device()
        sizes = [active_size(self.decisions[dim.decision], device) for dim in self.dims]
        return self._build(sizes, static=False)(*args, **kwargs)

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Module:
        sizes = [(value_in(self.decisions[dim.decision], arch), None) for dim in self.dims]
        # export_child deep-copies through the export's memo, so attributes such as a Hugging Face
        # `config` become the exported model's one copy, and nested mutables are exported.
        return export_child(self._build(sizes, static=True))

    # -- importance -------------------------------------------------------------------------------------
    def unit_importance(self, decision: str) -> Tensor:
        """``(units,)`` importance of each unit of a dimension: the L1 norm of its readers' weights over
        its inputs (the consuming layers, as :func:`~lightning_nas.nn.rules.elastic_expansion` ranks channels)."""
        dim = next((d for d in self.dims if d.decision == decision), None)
        if dim is None:
            raise ValueError(f"`decision` must be one of {[d.decision for d in self.dims]!r}, got {decision!r}")
        units = largest(self.decisions[decision])
        total = 0
        for sub in dim.readers:
            layer = self._layer(sub)
            out_axis, in_axis = _axes(layer)
            total = total + layer.weight.detach().abs().sum(out_axis).view(units, dim.unit).sum(1)
        return total

    def reordered(self) -> "SlicedModule":
        """A new ``SlicedModule`` whose units are sorted by :meth:`unit_importance`, most important first.

        Writers' outputs (in every group) and readers' inputs move together, so the module at its
        largest sizes computes what it computed; every smaller size then keeps the most important
        units. The sorted layers hold new parameters (build optimisers afterwards); this module and
        the original layers are left as they are.
        """
        replacements: dict[str, nn.Module] = {}
        for dim in self.dims:
            units = largest(self.decisions[dim.decision])
            order = torch.argsort(self.unit_importance(dim.decision), descending=True, stable=True)
            within = (order[:, None] * dim.unit + torch.arange(dim.unit)).reshape(-1)  # entries of the sorted units
            for sub, groups in dim.writers.items():
                layer = self._layer(sub)
                index = (torch.arange(groups)[:, None] * units * dim.unit + within).reshape(-1)
                replacements[sub] = _permuted_layer(layer, _axes(layer)[0], index, bias=True)
            for sub in dim.readers:
                layer = self._layer(sub)
                replacements[sub] = _permuted_layer(layer, _axes(layer)[1], within, bias=False)
        base = _shallow_copy(self._template)
        base._modules = {k: v for k, v in self._modules.items() if k != "decisions"}
        base._parameters, base._buffers = dict(self._parameters), dict(self._buffers)
        new = SlicedModule(_replace_inside(base, replacements), self.dims, dict(self.decisions.items()))
        new.training = self.training
        return new

    def extra_repr(self) -> str:
        dims = ", ".join(f"{d.decision}: {list(self.decisions[d.decision].values)}" for d in self.dims)
        return f"{self._module_type}, {dims}"


# -- the layer stack --------------------------------------------------------------------------------------


class _Routed:
    """Per-example mode: a layer run on the rows that keep it; the others pass their input on."""

    def __init__(self, layer: nn.Module, keeps: Callable[[], Tensor], context: Any) -> None:
        self.layer, self.keeps, self.context = layer, keeps, context

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        keep = self.keeps()
        if not isinstance(x, Tensor) or x.shape[0] != keep.shape[0]:
            raise ValueError(f"per-example mode: {keep.shape[0]} rows are active, but the layer's input has shape {getattr(x, 'shape', x)}")
        rows = keep.nonzero().flatten()
        if rows.numel() == 0:
            return x
        n = x.shape[0]

        def narrow(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value.index_select(0, rows.to(value.device)) if value.dim() and value.shape[0] == n else value
            if value is None or isinstance(value, (bool, int, float, str)):
                return value
            raise ValueError(
                f"per-example mode: layers differ between the rows of this batch, so each layer runs on some rows only, "
                f"but it also gets a {type(value).__name__} that cannot be split by rows; call the model without it "
                "(for Hugging Face models: use_cache=False)"
            )

        with self.context.route(rows):
            y = self.layer(x.index_select(0, rows), *map(narrow, args), **{k: narrow(v) for k, v in kwargs.items()})
        if not isinstance(y, Tensor) or y.shape[1:] != x.shape[1:]:
            raise ValueError(f"per-example mode: a layer must return one tensor of its input's shape to be skipped, got {type(y).__name__}")
        return x.index_copy(0, rows.to(x.device), y)


# What the exported config of a Hugging Face model says per layer: (heads, hidden width, config key of the width).
_LAYER_FACTS: dict[str, tuple[Callable[[nn.Module], int], Callable[[nn.Module], int], str]] = {
    "gpt2_block": (lambda layer: layer.attn.num_heads, lambda layer: layer.mlp.c_fc.nf, "n_inner"),
    "bert_layer": (lambda layer: layer.attention.self.num_attention_heads, lambda layer: layer.intermediate.dense.out_features, "intermediate_size"),
}


def _hf_config(layers: Sequence[nn.Module]) -> Any:
    """The Hugging Face config the layers' modules share, or ``None``."""
    modules = (m._template if isinstance(m, SlicedModule) else m for layer in layers for m in layer.modules())
    return next((m.config for m in modules if hasattr(getattr(m, "config", None), "to_dict")), None)


def _sync_config(config: Any, kind: str | None, layers: list[nn.Module], kept: list[int], source: Any) -> None:
    """Make an (exported) Hugging Face config describe the kept layers (see :class:`ElasticLayers`);
    ``source`` is the original model's config, whose MLP width stays when the kept layers' widths differ."""
    facts = _LAYER_FACTS.get(kind)
    if config is None or facts is None:
        return
    heads, width, width_key = facts
    config.num_hidden_layers = len(layers)
    config.layer_num_heads = [heads(layer) for layer in layers]
    config.layer_intermediate_sizes = [width(layer) for layer in layers]
    config.source_layers = list(kept)
    widths = set(config.layer_intermediate_sizes)
    # Set from the source each time: a config described again (DynamicNetwork's switches) must not keep
    # a common width from an earlier set of layers.
    setattr(config, width_key, widths.pop() if len(widths) == 1 else getattr(source, width_key))


def _finish_stack(layers: Sequence[nn.Module], kept: Sequence[int], config: Any, kind: str | None, source: Any) -> None:
    """Make exported layers ``layers`` (from source indices ``kept``) a consistent stack: every
    ``layer_idx`` renumbered ``0, 1, ...`` (Hugging Face caches index layers by it) and the Hugging
    Face ``config`` describing them (:func:`_sync_config`; ``source``: the original model's config).
    Used by :meth:`ElasticLayers.freeze` and by :class:`~lightning_nas.dynamic.DynamicNetwork` after it
    swaps layers of a stack."""
    for j, layer in enumerate(layers):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = j
    _sync_config(config, kind, list(layers), list(kept), source)


class ElasticLayers(Mutable):
    """A stack of transformer layers (an ``nn.Sequential`` or ``nn.ModuleList``) whose depth is searched.

    The layers stay children ``"0"``, ``"1"``... (the ``state_dict`` keys do not change). Iterating
    yields the layers that run (Hugging Face models loop ``for layer in self.h``); calling it runs
    them in turn on one tensor (timm calls ``self.blocks(x)``).

    * ``mode="prefix"``: one ``Choice`` of depths ``min_depth..n`` labelled ``{label}.depth``; the
      first ``depth`` layers run.
    * ``mode="skip"``: one ``Choice([False, True])`` per layer labelled ``{label}.{i}.keep``; any
      set of layers runs ("skip any layer"; ``min_depth`` does not apply).
    * ``mode=None``: no decision (kept for its export).

    In per-example mode a layer that some rows skip runs on the other rows only (tensor arguments
    whose first dimension is the batch are narrowed to them); the skipping rows pass their input on.

    Export gives an ``nn.Sequential`` / ``nn.ModuleList`` (the original container's type) of the
    exported layers that run, with every ``layer_idx`` attribute renumbered ``0, 1, ...``. For GPT-2
    and BERT layers, the ``config`` the exported layers share (the exported model's) is set to
    describe them: ``num_hidden_layers`` (``n_layer``) = the number kept, ``layer_num_heads`` and
    ``layer_intermediate_sizes`` = each kept layer's head count and MLP width, ``source_layers`` =
    their indices in the original stack, and ``n_inner`` / ``intermediate_size`` = the MLP width
    when every kept layer has the same one (else it keeps the original value: read the per-layer
    list). ``num_attention_heads`` (``n_head``) keeps the original count, because these models
    derive the head dimension (which stays) from ``hidden_size / num_attention_heads``.

    Args:
        layers: the layers (each takes the hidden states first and returns a tensor of their shape).
        mode: ``"prefix"``, ``"skip"`` or ``None``.
        min_depth: the fewest layers of a ``"prefix"`` stack.
        label: prefix of the labels (the stack's path).
        sequential: export as an ``nn.Sequential`` (else an ``nn.ModuleList``).
    """

    def __init__(self, layers: Sequence[nn.Module], *, mode: str | None, min_depth: int = 1, label: str, sequential: bool) -> None:
        super().__init__()
        layers = list(layers)
        if not layers or not all(isinstance(m, nn.Module) for m in layers):
            raise ValueError("ElasticLayers: `layers` must be a non-empty list of modules")
        if mode not in _DEPTH_MODES:
            raise ValueError(f"ElasticLayers: `mode` must be one of {_DEPTH_MODES!r}, got {mode!r}")
        if not isinstance(min_depth, int) or isinstance(min_depth, bool) or not 0 <= min_depth < len(layers):
            raise ValueError(f"ElasticLayers: `min_depth` must be an int in [0, {len(layers) - 1}] (fewer than the {len(layers)} layers), got {min_depth!r}")
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)
        self.mode, self.sequential, self.n_layers = mode, sequential, len(layers)
        if mode == "prefix":
            choices = [Choice(list(range(min_depth, len(layers) + 1)), f"{label}.depth", default=len(layers))]
        elif mode == "skip":
            choices = [Choice([False, True], f"{label}.{i}.keep", default=True) for i in range(len(layers))]
        else:
            choices = []
        self.decisions = nn.ModuleList(choices)

    def __len__(self) -> int:
        return self.n_layers

    def __getitem__(self, index: int) -> nn.Module:
        return self._modules[str(range(self.n_layers)[index])]

    def _runs(self, i: int, arch: Mapping[str, Any]) -> bool:
        if self.mode == "prefix":
            return arch[self.decisions[0].label] > i
        if self.mode == "skip":
            return bool(arch[self.decisions[i].label])
        return True

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.n_layers):
            layer = self[i]
            if self.mode is None:
                yield layer
                continue
            choice = self.decisions[0] if self.mode == "prefix" else self.decisions[i]
            indices = choice.example_indices()
            uniform = None if indices is None else choice.uniform_index()
            if indices is None or uniform is not None:
                value = choice.value if indices is None else choice.values[uniform]
                if (value > i) if self.mode == "prefix" else value:
                    yield layer
                elif self.mode == "prefix":
                    return  # every later layer is past the depth too
                continue

            bounds = choice.index_bounds()  # known on the host: every row keeps or skips layer i without a GPU read
            if self.mode == "prefix" and bounds is not None and i < choice.values[bounds[0]]:
                yield layer
                continue
            if self.mode == "prefix" and bounds is not None and i >= choice.values[bounds[1]]:
                return

            def keeps(choice: Choice = choice, i: int = i) -> Tensor:
                idx = choice.example_indices()
                return choice.values_tensor(idx.device).index_select(0, idx) > i if self.mode == "prefix" else idx == 1

            yield _Routed(layer, keeps, choice._context)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        for layer in self:
            x = layer(x, *args, **kwargs)
        return x

    @property
    def layer_kind(self) -> str | None:
        """``"timm_block"``, ``"gpt2_block"`` or ``"bert_layer"``: what the layers are (``None`` for others)."""
        first = self[0]
        return _kind(first._template if isinstance(first, SlicedModule) else first)

    def stage_layout(self) -> list[tuple[str, tuple[Any, ...], tuple[str, ...]]]:
        """The stages the structure-based pipeline (:meth:`~lightning_nas.spaces.staged.StagedSpace.from_supernet`)
        reads from this stack: ``[(depth label, depth candidates, names of the block children)]``.

        * ``"prefix"``: one stage of all the layers (blocks ``"0"``, ``"1"``...), its depth the
          ``{label}.depth`` decision, as for a :class:`~lightning_nas.nn.DepthChoice`;
        * ``"skip"``: one stage per layer, holding that layer alone, whose depth is the layer's
          ``{label}.{i}.keep`` decision: ``False`` (0 blocks run) or ``True`` (1 block; a bool is
          the int 0 / 1). A skipped layer is then an inactive block: additive tables charge it
          nothing (its input passes on unchanged), and its accuracy gain is that stage's depth gain;
        * ``None``: no stage (every layer is an ordinary always-active unit).
        """
        if self.mode == "prefix":
            choice = self.decisions[0]
            return [(choice.label, tuple(choice.values), tuple(str(i) for i in range(self.n_layers)))]
        if self.mode == "skip":
            return [(choice.label, tuple(choice.values), (str(i),)) for i, choice in enumerate(self.decisions)]
        return []

    def freeze(self, arch: dict[str, Any], export_child) -> nn.Module:
        kept = [i for i in range(self.n_layers) if self._runs(i, arch)]
        layers = [export_child(self[i]) for i in kept]
        config = source = _hf_config([self[i] for i in range(self.n_layers)])
        if config is not None:
            # The exported model's copy of the config (the export's deep-copy memo maps the supernet's
            # config to it), found even when no layer is kept.
            holder = nn.Module()
            holder.config = config
            config = export_child(holder).config
        _finish_stack(layers, kept, config, self.layer_kind, source)
        return nn.Sequential(*layers) if self.sequential else nn.ModuleList(layers)

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}, mode={self.mode!r}"


# -- the rules -------------------------------------------------------------------------------------------


def _counts(original: int, ratios: tuple[float, ...], divisor: int) -> list[int]:
    return sorted({original} | {min(original, max(divisor, make_divisible(r * original, divisor) if divisor > 1 else round(r * original))) for r in ratios})


def _heads_dim(path: str, module: nn.Module, kind: str) -> tuple[int, SlicedDim]:
    """``(heads, SlicedDim)`` of an attention module, or a ``ValueError`` naming what is unsupported."""
    if kind == "timm_attention":
        if not isinstance(module.norm, nn.Identity) or getattr(module, "gate", None) is not None:
            raise ValueError(f"elastic_heads: {path!r} (timm Attention) normalises or gates its heads (scale_norm / gated); only plain attention can drop heads")
        if not hasattr(module, "attn_dim"):
            raise ValueError(f"elastic_heads: {path!r}: this timm version's Attention has no `attn_dim`; heads cannot be sliced (timm >= 1.0.20 has it)")
        return module.num_heads, SlicedDim("num_heads", module.head_dim, {"qkv": 3}, ("proj",), {"": {"num_heads": 1, "attn_dim": module.head_dim}})
    if kind == "gpt2_attention":
        if module.is_cross_attention:
            raise ValueError(f"elastic_heads: {path!r} is a cross-attention; only self-attention heads are made elastic")
        return module.num_heads, SlicedDim("num_heads", module.head_dim, {"c_attn": 3}, ("c_proj",), {"": {"num_heads": 1, "split_size": module.head_dim}})
    if module.is_cross_attention or type(module.self).__name__ != "BertSelfAttention":
        raise ValueError(f"elastic_heads: {path!r} is a cross-attention ({type(module.self).__name__}); only self-attention heads are made elastic")
    d = module.self.attention_head_size
    writers = {"self.query": 1, "self.key": 1, "self.value": 1}
    return module.self.num_attention_heads, SlicedDim("num_heads", d, writers, ("output.dense",), {"self": {"num_attention_heads": 1, "all_head_size": d}})


def _mlp_dim(path: str, module: nn.Module, kind: str) -> tuple[int, SlicedDim, str]:
    """``(hidden width, SlicedDim, label suffix)`` of a feed-forward module."""
    if kind == "timm_mlp":
        if type(module.fc1) is not nn.Linear or type(module.fc2) is not nn.Linear or not isinstance(module.norm, nn.Identity):
            raise ValueError(f"elastic_mlp: {path!r} (timm Mlp) uses 1x1 convolutions or a norm on its hidden width; only nn.Linear -> act -> nn.Linear is supported")
        return module.fc1.out_features, SlicedDim("hidden", 1, {"fc1": 1}, ("fc2",), {}), "hidden_features"
    if kind == "gpt2_mlp":
        return module.c_fc.nf, SlicedDim("hidden", 1, {"c_fc": 1}, ("c_proj",), {}), "n_inner"
    return module.intermediate.dense.out_features, SlicedDim("hidden", 1, {"intermediate.dense": 1}, ("output.dense",), {}), "intermediate_size"


class _Sliced:
    """The rule made by :func:`elastic_heads` or :func:`elastic_mlp`."""

    def __init__(self, name: str, kinds: tuple[str, ...], ratios: tuple[float, ...], divisor: int, reorder: bool, where: Where | None) -> None:
        self.name, self.kinds, self.ratios, self.divisor, self.reorder, self.where = name, kinds, ratios, divisor, reorder, where

    def __call__(self, path: str, module: nn.Module) -> SlicedModule | None:
        kind = _kind(module)
        if kind not in self.kinds or (self.where is not None and not self.where(path, module)):
            return None
        if self.name == "elastic_heads":
            units, dim = _heads_dim(path, module, kind)
            suffix, divisor = "num_heads", 1
        else:
            units, dim, suffix = _mlp_dim(path, module, kind)
            divisor = self.divisor
        counts = _counts(units, self.ratios, divisor)
        if len(counts) < 2:
            return None
        try:
            sliced = SlicedModule(module, [dim], {dim.decision: Choice(counts, f"{path}.{suffix}", default=units)})
        except ValueError as error:
            raise ValueError(f"{self.name}: {path!r}: {error}") from None
        return sliced.reordered() if self.reorder else sliced

    def explain_no_match(self, model: nn.Module) -> str:
        what = "attention (timm Attention, GPT2Attention, BertAttention)" if self.name == "elastic_heads" else "feed-forward block (timm Mlp, GPT2MLP, BertLayer)"
        return f"it has no {what} large enough for two candidates of {list(self.ratios)}"

    def __repr__(self) -> str:
        divisor = f", divisor={self.divisor}" if self.name == "elastic_mlp" else ""
        return f"{self.name}({list(self.ratios)!r}{divisor}, reorder={self.reorder}{'' if self.where is None else ', where=...'})"


def _check_ratios(ratios: Any) -> tuple[float, ...]:
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence) or not ratios:
        raise ValueError(f"`ratios` must be a non-empty list of fractions in (0, 1], got {ratios!r}")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or math.isnan(r) or not 0 < r <= 1:
            raise ValueError(f"`ratios` must hold fractions in (0, 1] of the original size, got {r!r}")
    return tuple(sorted(set(ratios)))


def elastic_heads(ratios: Sequence[float] = (0.5, 0.75, 1.0), *, reorder: bool = True, where: Where | None = None) -> Rule:
    """A :func:`mutate` rule making the number of heads of each self-attention a decision.

    Matches timm ``Attention`` (ViT, DeiT), Hugging Face ``GPT2Attention`` and ``BertAttention``
    (self-attention only; the exact classes, not subclasses). Each becomes a :class:`SlicedModule`
    with ``Choice(counts, label=path + ".num_heads", default=H)`` where ``counts`` holds the
    original head count ``H`` and ``max(1, round(r * H))`` per ratio. ``h`` heads use the first
    ``h`` heads of the Q/K/V projections (in each of Q, K and V) and the matching inputs of the
    output projection; the head dimension stays, so the scores' scaling is unchanged. The module's
    own ``forward`` runs with ``num_heads`` (and ``attn_dim`` / ``split_size`` /
    ``all_head_size``) set to match, and exports as its own class.

    With ``reorder`` heads are first sorted by importance (the L1 norm of the output projection's
    weight over each head), so a smaller count keeps the most important heads; the attention still
    computes what it computed. The sorted layers hold new tensors: build optimisers after ``mutate``.

    Args:
        ratios: fractions of the original head count, in ``(0, 1]``.
        reorder: sort heads by importance first.
        where: optional filter ``where(path, attention) -> bool``.

    Returns:
        The rule. It raises ``ValueError`` (naming the path) for a matched attention it cannot slice:
        a timm ``Attention`` with ``scale_norm`` or ``gated``, a cross-attention.
    """
    _check_where(where)
    return _Sliced("elastic_heads", ("timm_attention", "gpt2_attention", "bert_attention"), _check_ratios(ratios), 1, bool(reorder), where)


def elastic_mlp(ratios: Sequence[float] = (0.5, 0.75, 1.0), *, divisor: int = 8, reorder: bool = True, where: Where | None = None) -> Rule:
    """A :func:`mutate` rule making the hidden width of each transformer feed-forward block a decision (the MLP ratio).

    Matches timm ``Mlp`` (``fc1 -> act -> fc2``), Hugging Face ``GPT2MLP`` (``c_fc``/``c_proj``)
    and ``BertLayer`` (``intermediate.dense`` / ``output.dense``, whose feed-forward spans two
    sub-modules). Each becomes a :class:`SlicedModule` with ``Choice(widths, default=M)``: the
    original width ``M`` and ``make_divisible(r * M, divisor)`` per ratio (at most ``M``),
    labelled ``path + ".hidden_features"`` (timm), ``".n_inner"`` (GPT-2) or
    ``".intermediate_size"`` (BERT), after each library's name for it. A width ``m`` uses the
    first ``m`` neurons. With ``reorder`` the neurons are first sorted by importance (the L1 norm
    of the second layer's weight over each); the sorted layers hold new tensors.

    Args:
        ratios: fractions of the original hidden width, in ``(0, 1]``.
        divisor: widths are multiples of it (``1``: plain rounding).
        reorder: sort hidden neurons by importance first.
        where: optional filter ``where(path, module) -> bool``.
    """
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        raise ValueError(f"`divisor` must be a positive int, got {divisor!r}")
    _check_where(where)
    return _Sliced("elastic_mlp", ("timm_mlp", "gpt2_mlp", "bert_layer"), _check_ratios(ratios), divisor, bool(reorder), where)


class _ElasticLayers:
    """The rule made by :func:`elastic_layers`."""

    def __init__(self, mode: str | None, min_depth: int, where: Where | None) -> None:
        self.mode, self.min_depth, self.where = mode, min_depth, where

    def __call__(self, path: str, module: nn.Module) -> ElasticLayers | None:
        if type(module) not in (nn.Sequential, nn.ModuleList) or not len(module):
            return None
        kinds = {_kind(m) for m in module}
        if len(kinds) != 1 or next(iter(kinds)) not in ("timm_block", "gpt2_block", "bert_layer"):
            return None
        if self.mode == "prefix" and len(module) <= self.min_depth:
            return None
        if self.where is not None and not self.where(path, module):
            return None
        return ElasticLayers(list(module), mode=self.mode, min_depth=self.min_depth if self.mode == "prefix" else 0,
                             label=path, sequential=type(module) is nn.Sequential)

    def explain_no_match(self, model: nn.Module) -> str:
        return (f"it has no nn.Sequential / nn.ModuleList of more than min_depth={self.min_depth} transformer layers "
                "(timm Block, GPT2Block, BertLayer)")

    def __repr__(self) -> str:
        return f"elastic_layers(mode={self.mode!r}, min_depth={self.min_depth}{'' if self.where is None else ', where=...'})"


def elastic_layers(*, mode: str | None = "prefix", min_depth: int = 1, where: Where | None = None) -> Rule:
    """A :func:`mutate` rule making the depth of a stack of transformer layers a decision.

    Matches an ``nn.Sequential`` or ``nn.ModuleList`` of timm ``Block`` s (``VisionTransformer.blocks``),
    ``GPT2Block`` s (``GPT2Model.h``) or ``BertLayer`` s (``BertEncoder.layer``); it becomes an
    :class:`ElasticLayers` labelled after the stack's path: ``mode="prefix"`` gives
    ``{path}.depth`` (the first ``n`` layers, ``min_depth <= n``), ``mode="skip"`` gives
    ``{path}.{i}.keep`` per layer (any subset), ``mode=None`` no decision: the stack then only
    renumbers the exported layers and writes the exported Hugging Face config (see
    :class:`ElasticLayers`), which the other rules' exports rely on to describe the model.

    Args:
        mode: ``"prefix"``, ``"skip"`` or ``None``.
        min_depth: the fewest layers kept in ``"prefix"`` mode.
        where: optional filter ``where(path, stack) -> bool``.
    """
    if mode not in _DEPTH_MODES:
        raise ValueError(f"`mode` must be one of {_DEPTH_MODES!r}, got {mode!r}")
    if not isinstance(min_depth, int) or isinstance(min_depth, bool) or min_depth < 0:
        raise ValueError(f"`min_depth` must be a non-negative int, got {min_depth!r}")
    _check_where(where)
    return _ElasticLayers(mode, min_depth, where)


def autoformer(
    *,
    head_ratios: Sequence[float] | None = (0.5, 0.75, 1.0),
    mlp_ratios: Sequence[float] | None = (0.5, 0.75, 1.0),
    divisor: int = 8,
    depth: str | None = "prefix",
    min_depth: int = 1,
    reorder: bool = True,
) -> Rule:
    """One rule turning a timm ViT, a GPT-2 or a BERT into an AutoFormer-style search space.

    Per layer: the number of heads (:func:`elastic_heads`), the MLP hidden width
    (:func:`elastic_mlp`); per stack: the depth (:func:`elastic_layers`). With the defaults: heads
    and widths ``(0.5, 0.75, 1.0)`` of the original (widths multiples of 8), sorted by importance;
    the first ``min_depth = 1`` to all layers. Every default is the original model.
    ``mutate(model, preset="autoformer")`` is this rule with its defaults. (AutoFormer also
    searches the embedding width; that is not offered on existing models.)

    Args:
        head_ratios: fractions of each attention's heads, or ``None`` for fixed heads.
        mlp_ratios: fractions of each MLP's hidden width, or ``None`` for fixed widths.
        divisor: MLP widths are multiples of it.
        depth: ``"prefix"`` (a depth), ``"skip"`` (an on/off decision per layer) or ``None``
            (fixed depth).
        min_depth: the fewest layers in ``"prefix"`` mode.
        reorder: sort heads and hidden neurons by importance first.

    Returns:
        One rule: ``mutate`` reports an error only when none of its parts matched anything.
    """
    parts: list[Rule] = [elastic_layers(mode=depth, min_depth=min_depth)]
    if mlp_ratios is not None:
        parts.append(elastic_mlp(mlp_ratios, divisor=divisor, reorder=reorder))
    if head_ratios is not None:
        parts.append(elastic_heads(head_ratios, reorder=reorder))
    options = (
        f"head_ratios={None if head_ratios is None else list(head_ratios)!r}, mlp_ratios={None if mlp_ratios is None else list(mlp_ratios)!r}, "
        f"divisor={divisor}, depth={depth!r}, min_depth={min_depth}, reorder={reorder}"
    )
    return _FirstOf("autoformer", parts, options)


TRANSFORMER_PRESETS: dict[str, Callable[[], Rule]] = {"autoformer": autoformer}
"""Presets by name for ``mutate(model, preset=name)`` (merged with :data:`lightning_nas.nn.rules.PRESETS`)."""
