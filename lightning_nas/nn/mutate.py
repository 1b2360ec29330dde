"""``mutate``: turn an existing model instance into a supernet-ready module tree, in place.

``mutate`` edits a model *instance* (a timm model, a torchvision model, your own ``nn.Module``)
without touching its class: chosen sub-modules become :class:`~lightning_nas.nn.OpChoice` between
the original and user-given alternatives, and *rules* swap matching layers for elastic ones (see
:func:`elastic_kernel`). The original weights are kept (shared, not copied) as the default and
largest candidate of every decision, so right after ``Supernet(mutate(model, ...))`` the supernet
computes exactly what ``model`` computed::

    net = timm.create_model("mobilenetv3_small_050")
    supernet = Supernet(mutate(
        net,
        ops={"blocks.2.1": [nn.Identity()]},
        rules=[elastic_kernel([3, 5], where=lambda path, m: m.groups > 1)],
    ))
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from lightning_nas.nn.choice import Choice, Mutable
from lightning_nas.nn.conv import ElasticConv2d
from lightning_nas.nn.op_choice import OpChoice

__all__ = ["mutate", "elastic_kernel"]

Rule = Callable[[str, nn.Module], "nn.Module | None"]

_ORIGINAL = "original"


def _describe(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)


def _match_training(new: nn.Module, old: nn.Module) -> None:
    """Give the modules of ``new`` that are not part of ``old`` the training mode of ``old``.

    Modules taken over from ``old`` keep their own mode (a frozen BatchNorm stays in eval mode).
    """
    kept = {id(m) for m in old.modules()}
    for m in new.modules():
        if id(m) not in kept:
            m.training = old.training


def _candidates(path: str, original: nn.Module, alternatives: Any) -> Sequence[nn.Module] | dict[str, nn.Module]:
    """The OpChoice candidates for ``ops[path]``: the original first, then the alternatives."""
    if isinstance(alternatives, Mapping) or isinstance(alternatives, nn.ModuleDict):
        alts = dict(alternatives.items())
        if not alts:
            raise ValueError(f"`ops[{path!r}]` must give at least one alternative module, got an empty dict")
        bad = [k for k in alts if not isinstance(k, str)]
        if bad:
            raise ValueError(f"`ops[{path!r}]` dict keys must be strings, got {bad!r}")
        if _ORIGINAL in alts:
            raise ValueError(f"`ops[{path!r}]` must not use the key {_ORIGINAL!r}: it names the original module")
        modules: list[tuple[Any, Any]] = list(alts.items())
        result: Any = {_ORIGINAL: original, **alts}
    elif isinstance(alternatives, nn.ModuleList) or (
        isinstance(alternatives, Sequence) and not isinstance(alternatives, (str, bytes))
    ):
        alts_list = list(alternatives)
        if not alts_list:
            raise ValueError(f"`ops[{path!r}]` must give at least one alternative module, got an empty list")
        modules = list(enumerate(alts_list))
        result = [original, *alts_list]
    elif isinstance(alternatives, nn.Module):
        raise ValueError(
            f"`ops[{path!r}]` must be a list or dict of alternative modules, got a single "
            f"{type(alternatives).__name__}; wrap it in a list: [module]"
        )
    else:
        raise ValueError(f"`ops[{path!r}]` must be a list or dict of alternative modules, got {type(alternatives).__name__}")
    for key, alt in modules:
        if not isinstance(alt, nn.Module):
            raise ValueError(f"alternative {key!r} of `ops[{path!r}]` must be an nn.Module, got {type(alt).__name__}")
    return result


Edit = tuple[nn.Module, str, nn.Module]  # (parent, attribute name, module now there)


def _apply_ops(model: nn.Module, ops: Mapping[str, Any], label_prefix: str, undo: list[Edit]) -> dict[int, tuple[OpChoice, str]]:
    """Replace every ``ops`` path by an ``OpChoice``; returns ``{id(op_choice): (op_choice, path)}``.

    Everything is checked before the first replacement; ``undo`` gets ``(parent, name, original)``.
    """
    if not isinstance(ops, Mapping):
        raise ValueError(f"`ops` must be a dict {{path: alternatives}} or None, got {type(ops).__name__}")
    names = [name for name, _ in model.named_modules(remove_duplicate=False)]
    known = set(names)
    for path in ops:
        if not isinstance(path, str):
            raise ValueError(f"`ops` keys must be dotted module paths (strings), got {path!r}")
        if path == "":
            raise ValueError("`ops` cannot replace the root module (path ''); wrap the model in an OpChoice yourself")
        if path not in known:
            close = difflib.get_close_matches(path, [n for n in names if n], n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "; see `model.named_modules()` for the paths"
            raise ValueError(f"`ops` path {path!r} is not a sub-module of {type(model).__name__}{hint}")
    # Deepest paths first: a path nested in another one is replaced inside the (future) original
    # candidate before the outer module is wrapped, and every parent path still resolves.
    planned = []
    for path in sorted(ops, key=lambda p: p.count("."), reverse=True):
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        original = parent._modules[name]
        if original is None:
            raise ValueError(f"`ops` path {path!r} holds None, not a module")
        if isinstance(original, Choice):
            raise ValueError(f"`ops` path {path!r} is a Choice (a decision), not an operation to choose between")
        candidates = _candidates(path, original, ops[path])
        alts = candidates.values() if isinstance(candidates, dict) else candidates
        ancestors = {id(model)} | {id(model.get_submodule(path[:i])) for i, ch in enumerate(path) if ch == "."}
        for alt in list(alts)[1:]:
            if any(id(m) in ancestors for m in alt.modules()):
                raise ValueError(f"an alternative of `ops[{path!r}]` contains a module enclosing {path!r}; that would make a cycle")
        op = OpChoice(candidates, label=label_prefix + path, default=_ORIGINAL if isinstance(candidates, dict) else 0)
        _match_training(op, original)
        planned.append((parent, name, original, op, path))
    made: dict[int, tuple[OpChoice, str]] = {}
    for parent, name, original, op, path in planned:
        setattr(parent, name, op)
        undo.append((parent, name, original))
        made[id(op)] = (op, path)
    return made


def _plan_rules(model: nn.Module, rules: Sequence[Rule], made: dict[int, tuple[OpChoice, str]], label_prefix: str) -> list[Edit]:
    """Walk the tree once; the replacements (first non-``None`` rule answer per plain module) to make."""
    replaced: dict[int, nn.Module] = {}  # shared modules get one shared replacement
    visited: set[int] = set()
    edits: list[Edit] = []

    def rewrite(path: str, module: nn.Module) -> nn.Module | None:
        for rule in rules:
            new = rule(label_prefix + path, module)
            if new is None or new is module:
                continue
            if not isinstance(new, nn.Module):
                raise ValueError(
                    f"rule {_describe(rule)} returned a {type(new).__name__} for {path!r}; a rule must return an "
                    "nn.Module (the replacement) or None (leave the module as it is)"
                )
            _match_training(new, module)
            return new
        return None

    def slot(parent: nn.Module, name: str, path: str) -> None:
        child = parent._modules[name]
        if child is None:
            return
        if id(child) in replaced:
            edits.append((parent, name, replaced[id(child)]))
            return
        if id(child) in made:
            # An OpChoice made by `ops`: its original (keeping the original path) gets the rules,
            # the user's alternatives are left as given.
            if id(child) not in visited:
                visited.add(id(child))
                key = _ORIGINAL if isinstance(child.candidates, nn.ModuleDict) else "0"
                slot(child.candidates, key, path)
            return
        if isinstance(child, (Mutable, Choice)):
            return  # already searchable: its decisions are the user's
        new = rewrite(path, child)
        if new is not None:
            replaced[id(child)] = new
            edits.append((parent, name, new))
            return
        if id(child) not in visited:
            visited.add(id(child))
            walk(child, path)

    def walk(module: nn.Module, path: str) -> None:
        for name in list(module._modules):
            slot(module, name, f"{path}.{name}" if path else name)

    walk(model, "")
    return edits


def mutate(
    model: nn.Module,
    *,
    ops: Mapping[str, Sequence[nn.Module] | Mapping[str, nn.Module]] | None = None,
    rules: Sequence[Rule] = (),
    label_prefix: str = "",
) -> nn.Module:
    """Turn ``model`` into a supernet-ready module tree, in place, keeping its weights as the default.

    Nothing about the model's class changes: sub-modules are swapped on the instance (through
    their parent's attributes, numeric names included for ``nn.Sequential``/``nn.ModuleList``).
    Every decision made here defaults to the original configuration, so ``Supernet(mutate(model,
    ...))`` computes exactly what ``model`` computed until another architecture is activated.

    Steps, in order:

    1. ``ops``: the sub-module at each path is replaced by ``OpChoice([original, *alternatives],
       label=label_prefix + path)`` (or ``OpChoice({"original": original, **alternatives}, ...)``
       for a dict) whose default is the original. Paths nested in other ``ops`` paths are applied
       first, so both decisions exist (the inner one inside the outer one's original).
    2. ``rules``: the tree is walked once, parents before children, and each plain sub-module (not
       the root) is offered to the rules in order; the first that returns a module other than the
       one it got replaces it, and its sub-tree is not walked further. The rules are called as
       ``rule(label_prefix + path, module)`` where ``path`` is the module's dotted path in the
       original model (inside an ``OpChoice`` made by step 1 the original candidate keeps its
       original path; the alternatives are not walked), so a rule can label its choices with the
       path it receives. Modules that are already lightning_nas mutables or choices are not walked.
       A module reachable from several places is rewritten once and the replacement is shared.

    New modules take the training mode of the module they replace (modules carried over from it
    keep their own), so mutating a model in eval mode keeps it in eval mode. When an error is
    raised the model is left as it was.

    Args:
        model: the model instance to edit; it is returned.
        ops: ``{path: alternatives}``, ``path`` as in ``model.named_modules()`` (e.g.
            ``"blocks.2.1"``), ``alternatives`` a non-empty list of modules or dict of named
            modules taking the same inputs as the original and giving outputs of the same shape.
        rules: callables ``rule(path, module) -> nn.Module | None``; see :func:`elastic_kernel`.
        label_prefix: prepended verbatim to every label and to the path given to rules (use
            ``"backbone."`` to get ``"backbone.blocks.2.1"``), to keep two mutated models apart.

    Returns:
        ``model`` itself, edited.

    Raises:
        ValueError: ``model`` is not an ``nn.Module`` (or is already a ``Supernet``); an ``ops``
            path is the root ``""`` or not a sub-module (the message suggests close names); an
            ``ops`` entry has no alternatives or a non-module one; a rule returns something that
            is neither ``None`` nor an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be an nn.Module instance, got {type(model).__name__}")
    from lightning_nas.supernet import Supernet  # local: the supernet module imports this package

    if isinstance(model, Supernet):
        raise ValueError("`model` is already a Supernet; mutate the plain model, then wrap it: Supernet(mutate(model, ...))")
    if not isinstance(label_prefix, str):
        raise ValueError(f"`label_prefix` must be a string, got {type(label_prefix).__name__}")
    if callable(rules) and not isinstance(rules, Sequence):
        raise ValueError("`rules` must be a list of rules; wrap a single rule in a list: rules=[rule]")
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ValueError(f"`rules` must be a list of callables rule(path, module), got {type(rules).__name__}")
    for rule in rules:
        if not callable(rule):
            raise ValueError(f"every rule must be callable as rule(path, module) -> nn.Module | None, got {rule!r}")
    undo: list[Edit] = []
    try:
        made = _apply_ops(model, {} if ops is None else ops, label_prefix, undo)
        edits = _plan_rules(model, list(rules), made, label_prefix) if rules else []
    except BaseException:
        for parent, name, original in reversed(undo):  # leave the model as it was
            setattr(parent, name, original)
        raise
    for parent, name, new in edits:
        setattr(parent, name, new)
    return model


class _ElasticKernel:
    """The rule made by :func:`elastic_kernel` (a class for a readable ``repr`` in errors)."""

    def __init__(self, kernel_sizes: tuple[int, ...], where: Callable[[str, nn.Module], bool] | None) -> None:
        self.kernel_sizes = kernel_sizes
        self.where = where

    def __call__(self, path: str, module: nn.Module) -> ElasticConv2d | None:
        if type(module) is not nn.Conv2d:
            return None
        conv = module
        k = conv.kernel_size[0]
        if (
            conv.kernel_size[0] != conv.kernel_size[1]
            or k % 2 == 0
            or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str)
            or conv.dilation[0] != conv.dilation[1]
            or not conv.padding[0] == conv.padding[1] == conv.dilation[0] * (k - 1) // 2
        ):
            return None  # no symmetric 'same' padding: smaller kernels would change the output size
        if conv.groups != 1 and not conv.groups == conv.in_channels == conv.out_channels:
            return None  # grouped (not depthwise) convolutions have no elastic form
        candidates = sorted({s for s in self.kernel_sizes if s <= k} | {k})
        if len(candidates) < 2:
            return None
        if self.where is not None and not self.where(path, conv):
            return None
        return ElasticConv2d.from_conv(conv, kernel_size=Choice(candidates, label=f"{path}.kernel_size", default=k))

    def __repr__(self) -> str:
        return f"elastic_kernel({list(self.kernel_sizes)!r}{'' if self.where is None else ', where=...'})"


def elastic_kernel(kernel_sizes: Sequence[int], *, where: Callable[[str, nn.Module], bool] | None = None) -> Rule:
    """A :func:`mutate` rule making the kernel size of plain ``nn.Conv2d`` layers elastic.

    A convolution qualifies when it is exactly an ``nn.Conv2d`` (subclasses such as timm's
    ``Conv2dSame`` compute differently and are skipped), its kernel ``K × K`` is square and odd, its
    padding is the symmetric "same" padding ``dilation * (K - 1) // 2`` (so every candidate keeps
    the output size), it is not grouped (or is depthwise), and ``where`` accepts it. It becomes
    ``ElasticConv2d.from_conv(conv, kernel_size=Choice(candidates, label=path + ".kernel_size",
    default=K))`` with ``candidates`` the sizes of ``kernel_sizes`` up to ``K`` plus ``K`` itself
    (smaller kernels are centre crops of the original ``K × K`` weight, which is shared, not copied).
    A convolution with a single candidate (a 1×1 one, say) is left alone.

    Args:
        kernel_sizes: candidate kernel sizes, positive odd ints.
        where: optional filter ``where(path, conv) -> bool`` called on qualifying convolutions with
            the path given to the rule (``label_prefix`` included), e.g. depthwise only:
            ``lambda path, m: m.groups > 1``.

    Returns:
        The rule ``rule(path, module) -> ElasticConv2d | None`` to pass in ``mutate(rules=[...])``.
    """
    if isinstance(kernel_sizes, (str, bytes)) or not isinstance(kernel_sizes, Sequence) or not kernel_sizes:
        raise ValueError(f"`kernel_sizes` must be a non-empty list of positive odd ints, got {kernel_sizes!r}")
    for k in kernel_sizes:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"`kernel_sizes` must hold positive odd ints (centre crops need odd kernels), got {k!r}")
    if where is not None and not callable(where):
        raise ValueError(f"`where` must be callable(path, module) -> bool or None, got {where!r}")
    return _ElasticKernel(tuple(sorted(set(kernel_sizes))), where)
