"""``mutate``: turn an existing model instance into a supernet-ready module tree, in place.

``mutate`` edits a model *instance* (a timm model, a torchvision model, your own ``nn.Module``)
without touching its class: chosen sub-modules become :class:`~lightning_nas.nn.OpChoice` between
the original and user-given alternatives, and *rules* swap matching layers for elastic ones (see
:mod:`lightning_nas.nn.rules`: elastic kernels, hidden widths, squeeze-excitation on/off, elastic
depth, and the ``"binas"`` preset that applies them all; for transformers see
:mod:`lightning_nas.nn.transformer_rules` and its ``"autoformer"`` preset). The original weights are kept as the
default and largest candidate of every decision, so right after ``Supernet(mutate(model, ...))``
the supernet computes exactly what ``model`` computed::

    net = timm.create_model("mobilenetv3_small_050")
    supernet = Supernet(mutate(
        net,
        ops={"blocks.2.1": [nn.Identity()]},
        rules=[elastic_kernel([3, 5], where=lambda path, m: m.groups > 1)],
    ))
    supernet = Supernet(mutate(timm.create_model("efficientnet_b0"), preset="binas"))
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from torch import nn

from lightning_nas.nn.choice import Choice, Mutable
from lightning_nas.nn.op_choice import OpChoice

__all__ = ["Replacement", "Rule", "mutate"]

logger = logging.getLogger(__name__)

Rule = Callable[[str, nn.Module], "nn.Module | None"]


class Replacement(NamedTuple):
    """One module ``mutate`` replaced (see its ``report`` argument).

    Attributes:
        path: the path the rule was given (``label_prefix`` included; a module kept inside a
            replacement, such as a block moved into a ``DepthChoice``, keeps its original path).
        rule: the rule's ``repr``.
        before: class name of the module replaced.
        after: class name of its replacement.
    """

    path: str
    rule: str
    before: str
    after: str

_ORIGINAL = "original"


def _describe(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)


def match_training(new: nn.Module, old: nn.Module) -> None:
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


def _labelled_choices(model: nn.Module) -> dict[str, str]:
    """``{label: path}`` of the labelled choices already in ``model`` (the first path of each label)."""
    found: dict[str, str] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, Choice) and m.label is not None:
            found.setdefault(m.label, path)
    return found


def _label_taken(label: str, where: str, existing: dict[str, str]) -> ValueError:
    return ValueError(
        f"{where} would make a decision labelled {label!r}, but the model already has one at {existing[label]!r} "
        "(from an earlier mutate call?); one label is one decision, so the two would be tied and the first one's "
        "candidates lost. Give all alternatives of a path in one mutate call, or use another `label_prefix`"
    )


def _apply_ops(
    model: nn.Module, ops: Mapping[str, Any], label_prefix: str, undo: list[Edit], existing: dict[str, str]
) -> dict[int, tuple[OpChoice, str]]:
    """Replace every ``ops`` path by an ``OpChoice``; returns ``{id(op_choice): (op_choice, path)}``.

    Everything is checked before the first replacement; ``undo`` gets ``(parent, name, original)``.
    ``existing`` (``{label: path}`` of the model's choices) must not hold a label made here.
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
        if label_prefix + path in existing:
            raise _label_taken(label_prefix + path, f"`ops[{path!r}]`", existing)
        candidates = _candidates(path, original, ops[path])
        alts = candidates.values() if isinstance(candidates, dict) else candidates
        ancestors = {id(model)} | {id(model.get_submodule(path[:i])) for i, ch in enumerate(path) if ch == "."}
        for alt in list(alts)[1:]:
            if any(id(m) in ancestors for m in alt.modules()):
                raise ValueError(f"an alternative of `ops[{path!r}]` contains a module enclosing {path!r}; that would make a cycle")
        op = OpChoice(candidates, label=label_prefix + path, default=_ORIGINAL if isinstance(candidates, dict) else 0)
        match_training(op, original)
        planned.append((parent, name, original, op, path))
    made: dict[int, tuple[OpChoice, str]] = {}
    for parent, name, original, op, path in planned:
        setattr(parent, name, op)
        undo.append((parent, name, original))
        made[id(op)] = (op, path)
    return made


def _plan_rules(
    model: nn.Module,
    rules: Sequence[Rule],
    made: dict[int, tuple[OpChoice, str]],
    label_prefix: str,
    original_paths: dict[int, str],
) -> tuple[list[Edit], list[Replacement], list[int]]:
    """Walk the tree once; the replacements (first non-``None`` rule answer per module) to make.

    Returns ``(edits, replacements, matches)`` with ``matches[i]`` the number of modules rule ``i``
    replaced. Modules a rule creates are walked too (a block rule's new layers meet the kernel rule,
    a depth rule's blocks meet the block rule); modules of the original model keep their original
    paths wherever a replacement put them.
    """
    replaced: dict[int, nn.Module] = {}  # shared modules get one shared replacement
    visited: set[int] = set()
    edits: list[Edit] = []
    replacements: list[Replacement] = []
    matches = [0] * len(rules)

    def rewrite(path: str, module: nn.Module) -> nn.Module | None:
        for i, rule in enumerate(rules):
            new = rule(label_prefix + path, module)
            if new is None or new is module:
                continue
            if not isinstance(new, nn.Module):
                raise ValueError(
                    f"rule {_describe(rule)} returned a {type(new).__name__} for {path!r}; a rule must return an "
                    "nn.Module (the replacement) or None (leave the module as it is)"
                )
            if not getattr(rule, "sets_training_mode", False):
                match_training(new, module)
            matches[i] += 1
            replacements.append(Replacement(label_prefix + path, _describe(rule), type(module).__name__, type(new).__name__))
            return new
        return None

    def slot(parent: nn.Module, name: str, path: str, wrapped: frozenset[int], kinds: frozenset[type]) -> None:
        child = parent._modules[name]
        if child is None:
            return
        original = id(child) in original_paths
        if id(child) in wrapped or (not original and type(child) in kinds):
            # The module a replacement wraps (an OpChoice around it, say), or a new module of a type
            # just replaced (a ReLU in the Sequential that replaced a ReLU): its children are walked,
            # it is not offered to the rules (a rule would rewrite it again, forever).
            if id(child) not in visited:
                visited.add(id(child))
                walk(child, path, wrapped, kinds)
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
                slot(child.candidates, key, path, wrapped, kinds)
            return
        if isinstance(child, Choice):
            return
        if isinstance(child, Mutable) and original:
            return  # already searchable in the user's model: its decisions are the user's
        new = rewrite(path, child)
        if new is not None:
            replaced[id(child)] = new
            edits.append((parent, name, new))
            walk(new, path, wrapped | {id(child)}, kinds | {type(child)})
            return
        if id(child) not in visited:
            visited.add(id(child))
            walk(child, path, wrapped, kinds)

    def walk(module: nn.Module, path: str, wrapped: frozenset[int], kinds: frozenset[type]) -> None:
        for name in list(module._modules):
            child = module._modules[name]
            child_path = original_paths.get(id(child)) or (f"{path}.{name}" if path else name)
            slot(module, name, child_path, wrapped, kinds)

    walk(model, "", frozenset(), frozenset())
    return edits, replacements, matches


def _check_rule_labels(
    edits: list[Edit], replacements: list[Replacement], made: dict[int, tuple[OpChoice, str]],
    existing: dict[str, str], original_paths: dict[int, str],
) -> None:
    """Refuse a rule-made decision whose label is already a decision of the model or of ``ops``."""
    taken = dict(existing)
    for op, path in made.values():
        taken.setdefault(op.label, f"{path}.choice")
    kept = {id(op.choice) for op, _ in made.values()}
    seen: set[int] = set()
    for _, _, new in edits:
        for m in new.modules():
            if not isinstance(m, Choice) or id(m) in seen or id(m) in kept or id(m) in original_paths:
                continue
            seen.add(id(m))
            if m.label is not None and m.label in taken:
                rule = next((r.rule for r in replacements if m.label.startswith(r.path)), "a rule")
                raise _label_taken(m.label, f"rule {rule}", taken)


def mutate(
    model: nn.Module,
    *,
    ops: Mapping[str, Sequence[nn.Module] | Mapping[str, nn.Module]] | None = None,
    rules: Sequence[Rule] = (),
    preset: str | None = None,
    label_prefix: str = "",
    strict: bool = True,
    report: list[Replacement] | None = None,
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
    2. ``rules`` (after the ``preset``'s rule, if any): the tree is walked once, parents before
       children, and each sub-module (not the root) is offered to the rules in order; the first
       that returns a module other than the one it got replaces it. The rules are called as
       ``rule(label_prefix + path, module)`` where ``path`` is the module's dotted path in the
       original model (inside an ``OpChoice`` made by step 1 the original candidate keeps its
       original path; the alternatives are not walked), so a rule can label its choices with the
       path it receives. The walk then goes on inside the replacement: modules of the original
       model that the replacement kept (the blocks a depth rule put in a ``DepthChoice``) are
       offered under their original paths, new modules a rule made (the elastic convolutions of a
       block rule) under their path in the replacement; the module a replacement wraps, and new
       modules of a type replaced on the way there, are not offered again (so a rule that wraps
       a ReLU in a new ``Sequential(ReLU(), ...)`` does not recurse). Modules of the original model that are already lightning_nas mutables or
       choices are not walked. A module reachable from several places is rewritten once and the
       replacement is shared.

    New modules take the training mode of the module they replace (modules carried over from it
    keep their own; a rule with ``sets_training_mode = True`` sets the modes of its new modules
    itself), so mutating a model in eval mode keeps it in eval mode. When an error is raised the
    model is left as it was: rules build replacements (with new tensors where weights must change,
    e.g. reordered channels) and nothing is swapped in before every rule has succeeded.

    Args:
        model: the model instance to edit; it is returned.
        ops: ``{path: alternatives}``, ``path`` as in ``model.named_modules()`` (e.g.
            ``"blocks.2.1"``), ``alternatives`` a non-empty list of modules or dict of named
            modules taking the same inputs as the original and giving outputs of the same shape.
        rules: callables ``rule(path, module) -> nn.Module | None``; see
            :mod:`lightning_nas.nn.rules`.
        preset: the name of a ready-made rule applied before ``rules``: ``"binas"``
            (:func:`lightning_nas.nn.rules.binas` with its defaults: CNNs) or ``"autoformer"``
            (:func:`lightning_nas.nn.transformer_rules.autoformer`: timm ViTs, Hugging Face GPT-2
            and BERT). Call the preset function yourself to change its options:
            ``rules=[rules.binas(min_depth=2)]``.
        label_prefix: prepended verbatim to every label and to the path given to rules (use
            ``"backbone."`` to get ``"backbone.blocks.2.1"``), to keep two mutated models apart.
        strict: raise when a rule (or the preset) replaced no module at all, rather than
            silently doing nothing; ``False`` allows it.
        report: if given, a list that gets one :class:`Replacement` per module replaced by a rule.
            A one-line summary is also logged (``logging``, level INFO, logger
            ``lightning_nas.nn.mutate``).

    Returns:
        ``model`` itself, edited.

    Raises:
        ValueError: ``model`` is not an ``nn.Module`` (or is already a ``Supernet``); an ``ops``
            path is the root ``""`` or not a sub-module (the message suggests close names); an
            ``ops`` entry has no alternatives or a non-module one; a decision made here (an ``ops``
            path, a rule's choice) would take a label the model already has (``mutate`` applied twice
            to one path); a rule returns something that
            is neither ``None`` nor an ``nn.Module``; a rule cannot handle a module it matches (the
            message names the module's path and why); ``strict`` and a rule matched nothing; an
            unknown ``preset``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be an nn.Module instance, got {type(model).__name__}")
    from lightning_nas.nn.rules import PRESETS  # local: the rules modules import this one
    from lightning_nas.nn.transformer_rules import TRANSFORMER_PRESETS

    presets = {**PRESETS, **TRANSFORMER_PRESETS}
    from lightning_nas.supernet import Supernet  # local: the supernet module imports this package

    if isinstance(model, Supernet):
        raise ValueError("`model` is already a Supernet; mutate the plain model, then wrap it: Supernet(mutate(model, ...))")
    if not isinstance(strict, bool):
        raise ValueError(f"`strict` must be a bool, got {strict!r}")
    if not isinstance(label_prefix, str):
        raise ValueError(f"`label_prefix` must be a string, got {type(label_prefix).__name__}")
    if callable(rules) and not isinstance(rules, Sequence):
        raise ValueError("`rules` must be a list of rules; wrap a single rule in a list: rules=[rule]")
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ValueError(f"`rules` must be a list of callables rule(path, module), got {type(rules).__name__}")
    for rule in rules:
        if not callable(rule):
            raise ValueError(f"every rule must be callable as rule(path, module) -> nn.Module | None, got {rule!r}")
    if preset is not None:
        if preset not in presets:
            raise ValueError(f"unknown `preset` {preset!r}; known presets: {sorted(presets)!r}")
        rules = [presets[preset](), *rules]
    if report is not None and not isinstance(report, list):
        raise ValueError(f"`report` must be a list to append to, or None, got {type(report).__name__}")
    original_paths = {id(m): path for path, m in model.named_modules() if path}
    existing = _labelled_choices(model)
    undo: list[Edit] = []
    try:
        made = _apply_ops(model, {} if ops is None else ops, label_prefix, undo, existing)
        edits, replacements, matches = _plan_rules(model, list(rules), made, label_prefix, original_paths) if rules else ([], [], [])
        _check_rule_labels(edits, replacements, made, existing, original_paths)
        if strict:
            for rule, count in zip(rules, matches):
                if not count:
                    explain = getattr(rule, "explain_no_match", None)
                    why = f": {explain(model)}" if explain is not None else ""
                    raise ValueError(
                        f"rule {_describe(rule)} matched no module of {type(model).__name__}{why}; "
                        "pass strict=False to allow a rule that matches nothing"
                    )
    except BaseException:
        for parent, name, original in reversed(undo):  # leave the model as it was
            setattr(parent, name, original)
        raise
    for parent, name, new in edits:
        setattr(parent, name, new)
    if report is not None:
        report.extend(replacements)
    if rules:
        logger.info(
            "mutate(%s): %d modules replaced (%s)", type(model).__name__, len(replacements),
            ", ".join(f"{_describe(rule)}: {count}" for rule, count in zip(rules, matches)),
        )
    return model
