"""``Supernet``: finds every decision in a module tree, activates subnets, exports them."""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.nn.calibration import recalibrate_batch_norm
from lightning_nas.nn.choice import ArchContext, Choice, Mutable, candidate_key
from lightning_nas.nn.export import export_subnet
from lightning_nas.spaces.search_space import Decision, SearchSpace

__all__ = ["Supernet", "find_supernet"]

# Mutables keep their decision under this attribute; its label defaults to the mutable's path.
_OWN_CHOICE = "choice"


def _owner(choice: Choice) -> "Supernet | None":
    """The live supernet whose context ``choice`` reads, if any."""
    context = choice._context
    owner = None if context is None or context.owner is None else context.owner()
    return owner if owner is not None and owner.context is context else None


def _discover(module: nn.Module) -> tuple[list[Choice], SearchSpace]:
    choices: list[Choice] = []
    decisions: dict[str, Decision] = {}
    first_path: dict[str, str] = {}
    for path, m in module.named_modules(remove_duplicate=False):
        if isinstance(m, Supernet) and m is not module:
            raise ValueError(f"a Supernet cannot contain another Supernet (found at {path!r}); wrap the plain module once")
        if not isinstance(m, Choice):
            continue
        if m.label is None:
            owner, _, attr = path.rpartition(".")
            m.label = owner if attr == _OWN_CHOICE and owner else path
        if all(m is not c for c in choices):
            if _owner(m) is not None:
                gc.collect()  # a dropped supernet kept only by a reference cycle (a relaxation's hooks) is no owner
            if _owner(m) is not None:
                # One context per choice: a second supernet would take the choices over, and the first
                # one's activate() would silently stop changing what its forward computes.
                raise ValueError(
                    f"the choice {m.label!r} at {path!r} already belongs to another Supernet; a module can be in one "
                    "Supernet only: use that Supernet, or wrap a copy (copy.deepcopy(module))"
                )
            choices.append(m)
        known = decisions.get(m.label)
        if known is None:
            decisions[m.label] = Decision(m.label, m.values, m.default)
            first_path[m.label] = path
        elif [candidate_key(v) for v in known.values] != [candidate_key(v) for v in m.values]:
            raise ValueError(
                f"label {m.label!r} is used with different candidate lists: {list(known.values)!r} and {list(m.values)!r} "
                f"(at {first_path[m.label]!r} and {path!r}); one label is one decision, so its candidates must match"
            )
        elif candidate_key(known.default) != candidate_key(m.default):
            raise ValueError(
                f"label {m.label!r} is used with different defaults: {known.default!r} (at {first_path[m.label]!r}) and "
                f"{m.default!r} (at {path!r}); one label is one decision, so give every Choice of it the same `default`"
            )
    return choices, SearchSpace(list(decisions.values()))


class Supernet(nn.Module):
    """A weight-sharing supernet around any module tree containing lightning_nas mutables.

    ``forward`` calls the wrapped module under the active architecture. One architecture can be
    active for the whole batch (:meth:`activate` with a dict) or one per example (a list of dicts,
    or :meth:`activate_indices`): then each example runs exactly its own subnet.

    Args:
        module: the network; its choices are discovered at any depth. Unlabelled choices are
            named after their module path.
        static_shapes: how per-example mode computes (see :attr:`static_shapes`).

    Attributes:
        module: the wrapped network.
        space: the :class:`~lightning_nas.spaces.SearchSpace` of its decisions.
    """

    def __init__(self, module: nn.Module, *, static_shapes: bool | str = "auto") -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(f"`module` must be an nn.Module, got {type(module).__name__}")
        self.module = module
        self._choices, self.space = _discover(module)
        object.__setattr__(self, "context", ArchContext())
        self.context.owner = weakref.ref(self)
        self.static_shapes = static_shapes
        for choice in self._choices:
            choice.attach(self.context)
        for mutable in self.mutables():
            # Mutables without a decision of their own (a fixed-width norm inside a DepthChoice) still
            # need to know which rows run.
            object.__setattr__(mutable, "_arch_context", self.context)
        self.activate(self.space.default())

    #: Supernets pickled before the setting existed computed with static shapes.
    _static_shapes: bool | str = True

    @property
    def static_shapes(self) -> bool | str:
        """How per-example mode computes: ``"auto"`` (default), ``True`` or ``False``.

        ``"auto"``: static shapes on an accelerator (CUDA and others), grouped rows on a CPU, chosen
        from the device of the supernet's parameters at each activation (measured on a CPU: a
        per-example step 1.33× the heaviest subnet with static shapes, 0.82× grouped); and static
        shapes wherever ``torch.compile`` traces the supernet (grouping rows would break the graph
        at every choice; compiled, static shapes are the fastest on a CPU too: RESULTS.md).

        ``True``: every tensor has the shape the candidate lists fix (largest widths and
        kernels, every optional block on every row), and rows are told apart by masks folded into
        weights and batch statistics. Nothing is read back on the host, so a GPU never waits; one
        ``torch.compile`` graph serves every batch; the step can be captured as a CUDA graph; and
        each layer costs a fixed handful of operator calls. The arithmetic is the heaviest
        subnet's (rows of smaller subnets are computed at the largest shapes).

        ``False``: rows are grouped by candidate (a gather per group), so each row costs about its
        own subnet's arithmetic, but shapes depend on the sampled architectures and grouping reads
        values on the host (a GPU sync each). Cheaper where arithmetic dominates: a CPU, or very
        large batches. Mutables that do not support static shapes (they do not declare
        :attr:`~lightning_nas.nn.Mutable.masks_stopped_rows`) make the enclosing ``DepthChoice``
        group its rows either way.

        Both compute exactly what each row's own subnet computes. The mode in effect is
        ``supernet.context.static_shapes``.
        """
        return self._static_shapes

    @static_shapes.setter
    def static_shapes(self, value: bool | str) -> None:
        if not (isinstance(value, bool) or value == "auto"):
            raise ValueError(f"`static_shapes` must be True, False or 'auto', got {value!r}")
        self._static_shapes = value
        self._resolve_static_shapes(self._device())

    def _resolve_static_shapes(self, device: torch.device) -> None:
        static = self._static_shapes if isinstance(self._static_shapes, bool) else device.type != "cpu"
        self.context.static_shapes_when_compiled = self._static_shapes == "auto"
        if static != self.context.static_shapes:
            self.context.static_shapes = static
            self.context.clear_cache()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy (copy.deepcopy, pickle) owns its copy of the context.
        super().__setstate__(state)
        if "context" in self.__dict__:
            self.context.owner = weakref.ref(self)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.context.indices is not None:
            self._check_batch(args, kwargs)
        return self.module(*args, **kwargs)

    def _check_batch(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Per-example mode: the batch entering the supernet must have one example per active architecture.

        Checked here because inside, a wrong size either fails deep in torch or, when every example
        runs the same subnet, silently runs the batch under archs meant for other examples.
        """
        tensor = _first_tensor((args, kwargs))
        if tensor is None or not self.context.indices:
            return
        active = next(iter(self.context.indices.values())).shape[0]
        if tensor.dim() == 0 or tensor.shape[0] != active:
            raise ValueError(
                f"per-example mode: {active} architectures are active, so the batch must have {active} examples "
                f"(dimension 0), but the supernet's input has shape {tuple(tensor.shape)}; activate one architecture "
                "per example of this batch (activate_indices(space.sample_indices(batch_size, seed)))"
            )

    # -- activation --------------------------------------------------------------------------
    def _device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def activate(self, arch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Make ``arch`` the active subnet; a list of archs activates one per example of the next batch.

        Raises:
            ValueError: for an invalid architecture (unknown or missing label, value not a candidate).
        """
        if isinstance(arch, Mapping):
            self.context.values = self.space.validate(arch)
            self.context.indices = self.context.bounds = None
            self.context.rows = self.context.alive = None
            self.context.clear_cache()
            return
        if isinstance(arch, (str, bytes)) or not isinstance(arch, Iterable):
            raise ValueError(f"`arch` must be a dict {{label: value}} or a non-empty list of dicts (one per example), got {arch!r}")
        archs = list(arch)
        if not archs:
            raise ValueError("`arch` must be a dict or a non-empty list of dicts (one per example)")
        per_label = [self.space.indices(a) for a in archs]
        self.activate_indices({label: torch.tensor([p[label] for p in per_label]) for label in self.space.labels})

    def activate_indices(self, indices: Mapping[str, Tensor]) -> None:
        """Activate one architecture per example from candidate indices ``{label: LongTensor (B,)}``.

        This is the fast path for per-example sampling (see ``SearchSpace.sample_indices``).
        """
        if not isinstance(indices, Mapping):
            raise ValueError(f"`indices` must be a dict {{label: LongTensor (B,)}} of candidate indices, got {type(indices).__name__}")
        missing = [label for label in self.space.labels if label not in indices]
        unknown = [label for label in indices if label not in self.space._by_label]
        if missing or unknown:
            raise ValueError(f"`indices` must have exactly the labels {self.space.labels!r}; missing {missing!r}, unknown {unknown!r}")
        device = self._device()
        checked, bounds, batch = {}, {}, None
        for decision in self.space:
            # Checked where the indices are (usually the CPU, where they are drawn), then moved: checking
            # them on a GPU would stall it twice per decision.
            try:
                idx = torch.as_tensor(indices[decision.label])
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(f"`indices[{decision.label!r}]` must be a 1-D integer tensor of candidate indices: {err}") from None
            if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
                # .long() would truncate 1.7 to 1 and read True as 1: refuse rather than guess.
                raise ValueError(f"`indices[{decision.label!r}]` must hold integer candidate indices, got dtype {idx.dtype}")
            idx = idx.long()
            if idx.dim() != 1 or (batch is not None and idx.shape[0] != batch):
                raise ValueError(f"`indices[{decision.label!r}]` must be a 1-D tensor of one index per example, got shape {tuple(idx.shape)}")
            batch = idx.shape[0]
            if batch:
                lo, hi = (int(v) for v in torch.aminmax(idx))
                if lo < 0 or hi >= len(decision.values):
                    raise ValueError(f"`indices[{decision.label!r}]` must lie in [0, {len(decision.values)}), got {idx.tolist()!r}")
                bounds[decision.label] = (lo, hi)
            checked[decision.label] = idx.to(device)
        self._resolve_static_shapes(device)
        self.context.values = None
        self.context.indices = checked
        self.context.bounds = bounds if batch else None
        self.context.rows = self.context.alive = None
        self.context.clear_cache()

    @property
    def per_example(self) -> bool:
        """Whether one architecture per example is active."""
        return self.context.indices is not None

    @property
    def active_arch(self) -> dict[str, Any] | list[dict[str, Any]]:
        """The active architecture (a dict), or the list of per-example architectures."""
        if self.context.indices is None:
            return dict(self.context.values)
        columns = {label: idx.tolist() for label, idx in self.context.indices.items()}
        n = len(next(iter(columns.values()), []))
        return [self.space.from_indices({label: col[i] for label, col in columns.items()}) for i in range(n)]

    @contextlib.contextmanager
    def activated(self, arch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Iterator["Supernet"]:
        """Context manager: ``arch`` is active inside, the previous state is restored on exit."""
        saved = (self.context.values, self.context.indices, self.context.bounds)
        self.activate(arch)
        try:
            yield self
        finally:
            self.context.values, self.context.indices, self.context.bounds = saved
            self.context.rows = self.context.alive = None
            self.context.clear_cache()

    # -- export ------------------------------------------------------------------------------
    def export(
        self,
        arch: Mapping[str, Any] | None = None,
        *,
        calibration_batches: Iterable[Any] | None = None,
        num_calibration_batches: int | None = None,
    ) -> nn.Module:
        """A plain network (no lightning_nas mutables) equal to the supernet under ``arch``.

        Args:
            arch: the architecture (default: the active one, which must then be a single arch).
            calibration_batches: if given, the exported network's BatchNorm statistics are
                re-estimated on these batches (see :func:`~lightning_nas.nn.recalibrate_batch_norm`).
            num_calibration_batches: use at most this many calibration batches.

        Returns:
            The exported module, with copies of the supernet's (sliced) weights and buffers.
        """
        if arch is None:
            if self.per_example:
                raise ValueError("`arch` is required when one architecture per example is active")
            arch = self.context.values
        exported = export_subnet(self.module, self.space.validate(arch))
        if calibration_batches is not None:
            try:
                recalibrate_batch_norm(exported, calibration_batches, num_batches=num_calibration_batches)
            except ValueError as err:
                # Name the argument the caller gave, not recalibrate_batch_norm's own.
                raise ValueError(str(err).replace("`batches`", "`calibration_batches`").replace(
                    "`num_batches`", "`num_calibration_batches`")) from None
        return exported

    def mutables(self) -> list[Mutable]:
        """Every mutable module of the supernet."""
        return [m for m in self.module.modules() if isinstance(m, Mutable)]

    def extra_repr(self) -> str:
        return f"space={self.space!r}"


def _first_tensor(value: Any) -> Tensor | None:
    """The first tensor in a nested structure of arguments, or ``None``."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        value = value.values()
    elif not isinstance(value, (list, tuple)):
        return None
    for item in value:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def find_supernet(root: nn.Module, attribute: str | None = None) -> Supernet:
    """The ``Supernet`` inside ``root`` (a LightningModule, say), at any attribute depth.

    Args:
        root: the module to search.
        attribute: dotted path of the supernet when there are several (``"model.backbone"``).

    Raises:
        ValueError: when none is found, or several and ``attribute`` does not say which.
    """
    if attribute is not None:
        target = root.get_submodule(attribute)
        if not isinstance(target, Supernet):
            raise ValueError(f"`{attribute}` is a {type(target).__name__}, not a Supernet")
        return target
    found = [(path, m) for path, m in root.named_modules() if isinstance(m, Supernet)]
    if not found:
        raise ValueError(f"no Supernet found in {type(root).__name__}; wrap the searchable network in lightning_nas.Supernet")
    if len(found) > 1:
        raise ValueError(f"several Supernets found at {[p for p, _ in found]!r}; pass which one to use")
    return found[0][1]
