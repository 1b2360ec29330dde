"""``PerturbationSelection``: DARTS-PT architecture selection during a tuning phase of ``Trainer.fit``.

Runs next to a :class:`~lightning_nas.callbacks.darts.DartsSearch` (or ``DrNASSearch``) on a trained
supernet. Every ``interval`` epochs it makes one decision (thesis Algorithm 1): first the
operation of every edge, in a seeded random order (mask each operation, measure held-out accuracy,
keep the operation whose removal hurts most, discretise the edge), then the inputs of every cell
node (remove the edge whose removal leaves the highest accuracy until ``n_chosen`` remain). The
weights and α keep training in between (the fine-tuning). Plan ``interval · (decisions − 1) + 1``
epochs (:meth:`PerturbationSelection.epochs_needed`); decisions still open when fitting ends are
made then, without fine-tuning, with a warning.

Example::

    search = DartsSearch(arch_split)
    pt = PerturbationSelection(search, arch_split, interval=5, start_epoch=50)
    pl.Trainer(max_epochs=50 + pt.epochs_needed(model.net), callbacks=[search, pt]).fit(model, loader)
    subnet = model.net.export(pt.arch)

From a config (``lightning-nas fit``), ``search`` may be left out (the Trainer's only
``DartsSearch`` is used) and ``data`` names a DataModule split::

    trainer:
      callbacks:
        - {class_path: lightning_nas.callbacks.DartsSearch, init_args: {arch_data: held_out}}
        - {class_path: lightning_nas.callbacks.PerturbationSelection, init_args: {data: held_out, interval: 1}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import Dataset, default_collate

from lightning_nas.callbacks._checks import is_int, plain_state, require_finite, resolve_split
from lightning_nas.callbacks.darts import DartsSearch
from lightning_nas.differentiable.selection import (
    AccuracyFn,
    count_correct,
    magnitude_selection,
    select_inputs_by_perturbation,
    select_op_by_perturbation,
    supernet_correct,
)
from lightning_nas.io import atomic_write_json
from lightning_nas.nn.input_choice import InputChoice
from lightning_nas.nn.op_choice import OpChoice
from lightning_nas.seeding import derive_generator
from lightning_nas.supernet import Supernet

__all__ = ["PerturbationSelection"]


class PerturbationSelection(Callback):
    """DARTS-PT: perturbation-based operation and topology selection, one decision every ``interval`` epochs.

    Args:
        search: the search callback whose relaxation is selected from (also passed to the Trainer);
            ``None``: the Trainer's only ``DartsSearch`` / ``DrNASSearch`` callback, found at ``setup``.
        data: held-out split the accuracy is measured on (one pass, in order, train-mode BatchNorm;
            under DDP each rank measures every ``world_size``-th batch and the counts are summed): a
            map-style ``Dataset``, or the name of a split of the trainer's DataModule (``"held_out"``:
            the dataset of its ``held_out_dataloader()``, resolved at ``setup``).
        interval: fine-tuning epochs between decisions (thesis: 5).
        start_epoch: epoch of the first decision (the supernet's pre-training ends before it).
        batch_size: evaluation batch size.
        num_batches: measure on at most this many batches (default: the whole split).
        topology: also select the inputs of DARTS cell nodes (after all operations).
        accuracy_fn: ``accuracy_fn(pl_module, batch) -> (correct, count)``.
        seed: seed of the edge order.
        path: when fitting ends with every decision made, the selected arch is written there
            (atomically, by global rank 0) as ``{"format": "lightning-nas-arch", "arch": {...}}``,
            the file ``lightning-nas export --arch`` reads, so DARTS-PT runs from the shell too.

    Attributes:
        decisions: one record per decision: ``{"epoch", "kind", "labels", "scores": {label: ...},
            "chosen": {label: ...}}`` (op scores: accuracy with that op masked; input scores: per
            removal round, accuracy without that input).
    """

    def __init__(
        self,
        search: DartsSearch | None = None,
        data: Dataset | str | None = None,
        *,
        interval: int = 5,
        start_epoch: int = 0,
        batch_size: int = 64,
        num_batches: int | None = None,
        topology: bool = True,
        accuracy_fn: AccuracyFn | None = None,
        seed: int = 0,
        path: str | Path | None = None,
    ) -> None:
        if search is not None and not isinstance(search, DartsSearch):
            raise MisconfigurationException(
                f"`search` must be a DartsSearch (or DrNASSearch) callback, or None for the Trainer's only one, got {type(search).__name__}"
            )
        if isinstance(data, str):
            if not data:
                raise MisconfigurationException("`data` must be a non-empty map-style Dataset or a DataModule split name, got ''")
        elif data is None or not hasattr(data, "__getitem__") or not hasattr(data, "__len__") or len(data) == 0:
            raise MisconfigurationException(
                f"`data` must be a non-empty map-style Dataset or the name of a DataModule split (such as 'held_out'), "
                f"got {type(data).__name__}"
            )
        for name, value in (("interval", interval), ("batch_size", batch_size)):
            if not is_int(value, 1):
                raise MisconfigurationException(f"`{name}` must be a positive int, got {value!r}")
        if not is_int(start_epoch, 0):
            raise MisconfigurationException(f"`start_epoch` must be a non-negative int, got {start_epoch!r}")
        if num_batches is not None and not is_int(num_batches, 1):
            raise MisconfigurationException(f"`num_batches` must be a positive int or None, got {num_batches!r}")
        if not isinstance(topology, bool):
            raise MisconfigurationException(f"`topology` must be a bool, got {topology!r}")
        if accuracy_fn is not None and not callable(accuracy_fn):
            raise MisconfigurationException(f"`accuracy_fn` must be callable(pl_module, batch) -> (correct, count) or None, got {accuracy_fn!r}")
        if not is_int(seed, 0):
            raise MisconfigurationException(f"`seed` must be a non-negative int, got {seed!r}")
        self.search = search
        #: the split name given, or None when a Dataset was given; `data` is the Dataset (None until resolved).
        self.data_split = data if isinstance(data, str) else None
        self.data = None if isinstance(data, str) else data
        self.interval = interval
        self.start_epoch = start_epoch
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.topology = topology
        self.accuracy_fn = accuracy_fn or count_correct
        self.seed = seed
        self.path = None if path is None else Path(path)
        self.decisions: list[dict[str, Any]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(seed=self.seed, start_epoch=self.start_epoch)

    # -- plan --------------------------------------------------------------------------------
    def plan(self, supernet: Supernet) -> list[tuple[str, tuple[str, ...]]]:
        """The decisions in order: ``("op", labels)`` in seeded random order, then ``("inputs", labels)``.

        One decision covers the labels that differ only by their ``normal.``/``reduce.`` prefix (a
        DARTS projection decides an edge of both cell kinds at once); other labels are alone.
        """
        op_labels = list(dict.fromkeys(m.label for m in supernet.mutables() if isinstance(m, OpChoice)))
        input_labels = list(
            dict.fromkeys(m.label for m in supernet.mutables() if isinstance(m, InputChoice) and m.n_candidates > m.n_chosen)
        )
        op_groups = _group_cell_kinds(op_labels)
        order = torch.randperm(len(op_groups), generator=derive_generator(self.seed)).tolist()
        steps = [("op", op_groups[k]) for k in order]
        if self.topology:
            steps += [("inputs", group) for group in _group_cell_kinds(input_labels)]
        return steps

    def epochs_needed(self, supernet: Supernet) -> int:
        """Epochs from ``start_epoch`` to the last decision plus its fine-tuning: ``interval · (decisions − 1) + 1``."""
        return self.interval * (len(self.plan(supernet)) - 1) + 1

    @property
    def arch(self) -> dict[str, Any]:
        """The selected architecture (decided edges as chosen; undecided ones by magnitude)."""
        if self.search is None or self.search.relaxation is None:
            raise RuntimeError("PerturbationSelection.arch needs a fitted search (no DartsSearch relaxation yet)")
        return magnitude_selection(self.search.relaxation)

    @property
    def done(self) -> bool:
        return self.search is not None and self.search.relaxation is not None and len(self.decisions) >= len(self.plan(self.search.relaxation.supernet))

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.search is None:
            searches = [c for c in trainer.callbacks if isinstance(c, DartsSearch)]
            if len(searches) != 1:
                raise MisconfigurationException(
                    f"PerturbationSelection: `search=None` takes the Trainer's only DartsSearch / DrNASSearch callback, but it "
                    f"has {len(searches)} ({[type(c).__name__ for c in searches]}); add exactly one, or pass `search`"
                )
            self.search = searches[0]
        if self.search not in trainer.callbacks:
            raise MisconfigurationException("PerturbationSelection: pass its `search` callback to the same Trainer")
        if self.data_split is not None and stage == "fit":
            data = resolve_split(self.data_split, trainer, "PerturbationSelection", "data", dataset=True)
            if len(data) == 0:
                raise MisconfigurationException(f"PerturbationSelection: `data={self.data_split!r}` is an empty split; it must hold examples")
            self.data = data

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch >= self.start_epoch and (epoch - self.start_epoch) % self.interval == 0 and not self.done:
            self._decide(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        remaining = len(self.plan(self.search.relaxation.supernet)) - len(self.decisions)
        if remaining > 0 and trainer.current_epoch >= self.start_epoch:
            rank_zero_warn(
                f"PerturbationSelection: {remaining} decisions were still open when fitting ended; made now without "
                f"fine-tuning (plan {self.epochs_needed(self.search.relaxation.supernet)} epochs from start_epoch)"
            )
            while not self.done:
                self._decide(trainer, pl_module)
        if self.path is not None and self.done and trainer.is_global_zero:
            atomic_write_json(self.path, {"format": "lightning-nas-arch", "arch": self.arch,
                                          "decisions": len(self.decisions), "epoch": trainer.current_epoch})

    # -- decisions ---------------------------------------------------------------------------
    def _batches(self, device: torch.device, rank: int = 0, world_size: int = 1):
        """This rank's evaluation batches: batch ``k`` of the (limited) split goes to rank ``k mod world_size``."""
        n = len(self.data)
        limit = n if self.num_batches is None else min(n, self.num_batches * self.batch_size)
        for k, start in enumerate(range(0, limit, self.batch_size)):
            if k % world_size == rank:
                batch = default_collate([self.data[i] for i in range(start, min(start + self.batch_size, limit))])
                yield move_data_to_device(batch, device)

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> float:
        batches = self._batches(pl_module.device, trainer.global_rank, trainer.world_size)
        correct, total = supernet_correct(pl_module, batches, self.accuracy_fn)
        if trainer.world_size > 1:  # each rank measured its shard; every rank gets the same sums, so ranks decide alike
            sums = trainer.strategy.reduce(
                torch.tensor([correct, total], dtype=torch.float64, device=pl_module.device), reduce_op="sum"
            )
            correct, total = float(sums[0]), float(sums[1])
        if total == 0:
            raise ValueError("PerturbationSelection: `data` gave no examples to measure the accuracy on")
        return correct / total

    def _decide(self, trainer: Trainer, pl_module: LightningModule) -> None:
        relaxation = self.search.relaxation
        # Accuracies of a diverged network (argmax of NaN logits) would decide the edges at random.
        require_finite(pl_module, "PerturbationSelection", "a decision from its accuracies")
        kind, labels = self.plan(relaxation.supernet)[len(self.decisions)]
        was_training, was_sampling = pl_module.training, relaxation.sampling
        pl_module.train()  # DARTS-PT measures with batch statistics
        relaxation.sampling = False  # and with the mean weights (no Dirichlet draws)
        evaluate = lambda: self._evaluate(trainer, pl_module)  # noqa: E731
        record: dict[str, Any] = {"epoch": trainer.current_epoch, "kind": kind, "labels": list(labels), "scores": {}, "chosen": {}}
        try:
            for label in labels:
                if kind == "op":
                    chosen, scores = select_op_by_perturbation(relaxation, label, evaluate)
                    record["scores"][label] = {str(k): v for k, v in scores.items()}
                    record["chosen"][label] = chosen
                else:
                    n_chosen = next(
                        m.n_chosen for m in relaxation.supernet.mutables() if isinstance(m, InputChoice) and m.label == label
                    )
                    chosen, rounds = select_inputs_by_perturbation(relaxation, label, n_chosen, evaluate)
                    record["scores"][label] = [{str(k): v for k, v in r.items()} for r in rounds]
                    record["chosen"][label] = list(chosen)
        finally:
            pl_module.train(was_training)
            relaxation.sampling = was_sampling
        self.decisions.append(record)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return plain_state({"seed": self.seed, "decisions": self.decisions}, "PerturbationSelection state")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict.get("seed", self.seed)
        self.decisions = list(state_dict.get("decisions", []))


def _group_cell_kinds(labels: list[str]) -> list[tuple[str, ...]]:
    """Labels grouped by what follows a ``normal.``/``reduce.`` prefix, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        head, _, rest = label.partition(".")
        groups.setdefault(rest if head in ("normal", "reduce") and rest else label, []).append(label)
    return [tuple(group) for group in groups.values()]
