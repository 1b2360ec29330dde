"""``LatencyProfiler``: the latency / FLOPs / parameter tables of the supernet being trained."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_nas.bilinear import BilinearTable
from lightning_nas.callbacks._checks import check_supernet_path, plain_state
from lightning_nas.io import check_writable
from lightning_nas.profiling.tables import build_flops_table, build_params_table, check_fit_archs, fit_summary, load_or_build, stale_reasons
from lightning_nas.profiling.timing import ProfileSettings
from lightning_nas.spaces.staged import StagedSpace
from lightning_nas.supernet import Supernet, find_supernet

__all__ = ["LatencyProfiler"]

# State keys saved in checkpoints: enough to tell which table a run used, not the table itself.
_STATE_METADATA = ("settings", "device", "model", "created", "measurements", "profiler_version")


def _first_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        try:
            return _first_tensor(value)
        except ValueError:
            continue
    raise ValueError(f"cannot find an input tensor in the batch (got {type(batch).__name__}); pass `input_size` to LatencyProfiler")


class LatencyProfiler(Callback):
    """Builds (or reuses) the supernet's latency lookup table on this machine, plus FLOPs and
    parameter tables, without touching the model being trained.

    The latency table (BINAS Eq. 5: one entry per block configuration, timed alone at its real
    input shape, plus the fixed part as constant) is written to ``path`` and reused by later runs
    when it was measured for the same supernet, settings and device; otherwise it is rebuilt and
    the old file is kept as ``<path>.bak``. Profiling runs on exported copies on ``device``; the
    thread count and every module's mode and weights are left as they were, and no global random
    state is consumed.

    The table is built at ``on_fit_start`` when ``input_size`` is given, else on the first training
    batch (whose first tensor gives the input size).

    Language models: give ``vocab_size``; the network's input is then integer token ids of shape
    ``(batch_size, seq_len)`` (``input_size=(seq_len,)``, or read from the first training batch,
    an integer ``(B, T)`` tensor), so batch size and sequence length are both profile inputs.
    The token embedding is timed on token ids, every other unit on the activations it receives. Under DDP, rank 0 builds it and the other ranks
    load it after a barrier: ``path`` must be on a file system every rank sees.

    Args:
        path: the latency table's JSON file.
        batch_size: examples per timed forward call (BINAS CPU: 1).
        threads: CPU threads while timing (BINAS CPU: 1).
        input_size: ``(C, H, W)`` of one example, ``(seq_len,)`` for token inputs (default:
            inferred from the first training batch).
        vocab_size: the network takes token ids in ``[0, vocab_size)`` (a language model);
            ``None`` (default): float inputs. Required when the first batch holds integers.
        repeats: timed calls per measurement.
        warmup: untimed calls before them.
        supernet: dotted attribute path of the supernet in the LightningModule, when it has several.
        device: ``"cpu"`` (default) or ``"cuda"`` / ``"cuda:N"``.
        dtype: ``"float32"`` (default), ``"float16"``, ``"bfloat16"``, ``"float64"``.
        statistic: per-entry statistic of the repeats, ``"median"`` (default), ``"min"`` or
            ``"median_of_mins"`` (the steadiest on a shared machine; see
            :class:`~lightning_nas.profiling.ProfileSettings`).
        pin_malloc: pin glibc malloc's thresholds before timing (process-wide, irreversible; see
            :func:`~lightning_nas.profiling.pin_malloc_thresholds`); off by default.
        runtime: what the table is timed in, ideally what you deploy with: ``"eager"`` (PyTorch,
            default), ``"torchscript"`` (traced and frozen) or ``"onnxruntime"`` (needs
            ``pip install 'lightning-nas[onnx]'``); the latter two on CPU only (see
            :mod:`lightning_nas.profiling.runtimes`).
        calibration_archs: random archs timed end to end to estimate the fixed part.
        fit_archs: ``0`` (default): the table is the blocks timed alone plus the fixed part.
            ``N > 0``: ``N`` more random whole subnets are timed with the blocks and every entry
            is fitted to them (see :func:`~lightning_nas.profiling.build_latency_table`);
            recommended where blocks take tens of µs (ONNX Runtime or TorchScript on small
            inputs). A saved table fitted to another number of subnets is rebuilt.
        seed: seed of those archs and of the random inputs.
        rebuild: rebuild even when the file is valid.

    Attributes:
        latency_table, flops_table, params_table: ``BilinearTable``s (``None`` until built).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 1,
        threads: int = 1,
        input_size: Sequence[int] | None = None,
        repeats: int = 100,
        warmup: int = 10,
        supernet: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        statistic: str = "median",
        pin_malloc: bool = False,
        runtime: str = "eager",
        calibration_archs: int = 10,
        fit_archs: int = 0,
        seed: int = 0,
        rebuild: bool = False,
        vocab_size: int | None = None,
    ) -> None:
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"`path` must be a file path (str or Path), got {path!r}")
        if input_size is not None:
            input_size = tuple(input_size) if isinstance(input_size, Sequence) else input_size
        # Validates every setting now rather than at the first batch; a stand-in size until known.
        self._settings_kwargs = dict(
            batch_size=batch_size, threads=threads, repeats=repeats, warmup=warmup, device=device or "cpu", dtype=dtype,
            statistic=statistic, pin_malloc=pin_malloc, runtime=runtime, vocab_size=vocab_size,
        )
        ProfileSettings(input_size=input_size if input_size is not None else (1,), **self._settings_kwargs)
        if not isinstance(calibration_archs, int) or isinstance(calibration_archs, bool) or calibration_archs < 1:
            raise ValueError(f"`calibration_archs` must be an int >= 1, got {calibration_archs!r}")
        check_fit_archs(fit_archs, calibration_archs)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
        if not isinstance(rebuild, bool):
            raise ValueError(f"`rebuild` must be a bool, got {rebuild!r}")
        check_supernet_path(supernet, ValueError)
        # Refused now, not after the minutes a build takes.
        self.path = check_writable(path, "LatencyProfiler `path`")
        self.input_size = input_size
        self.supernet_path = supernet
        self.calibration_archs = calibration_archs
        self.fit_archs = fit_archs
        self.seed = seed
        self.rebuild = bool(rebuild)
        self.latency_table: BilinearTable | None = None
        self.flops_table: BilinearTable | None = None
        self.params_table: BilinearTable | None = None
        self._supernet: Supernet | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(path=str(self.path), supernet=self.supernet_path)

    @property
    def settings(self) -> ProfileSettings | None:
        """The measurement settings (``None`` while the input size is still unknown)."""
        if self.input_size is None:
            return None
        return ProfileSettings(input_size=tuple(self.input_size), **self._settings_kwargs)

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._supernet = find_supernet(pl_module, self.supernet_path)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.input_size is not None and self.latency_table is None:
            self._profile(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.latency_table is None:
            if self.input_size is None:
                first = _first_tensor(batch)
                if not (first.is_floating_point() or first.is_complex()) and self._settings_kwargs["vocab_size"] is None:
                    raise ValueError(
                        f"LatencyProfiler: the first training batch holds {first.dtype} inputs of shape {tuple(first.shape)} "
                        "(token ids?) but `vocab_size` is None; pass LatencyProfiler(vocab_size=...) so that the table is "
                        "timed on token ids of the network's vocabulary"
                    )
                self.input_size = tuple(first.shape[1:])
            self._profile(trainer)

    # -- work --------------------------------------------------------------------------------
    def _profile(self, trainer: Trainer) -> None:
        settings = self.settings
        supernet = self._supernet
        failure: BaseException | None = None
        if trainer.is_global_zero:
            try:
                self.latency_table = load_or_build(
                    supernet, self.path, settings, rebuild=self.rebuild, calibration_archs=self.calibration_archs,
                    fit_archs=self.fit_archs, seed=self.seed,
                )
            except BaseException as err:  # every rank must reach the barrier, or the others hang
                failure = err
        trainer.strategy.barrier("lightning_nas.LatencyProfiler")
        if failure is not None:
            raise failure
        if not trainer.is_global_zero:
            table = BilinearTable.load(self.path, StagedSpace.of(supernet))
            reasons = stale_reasons(table.metadata, supernet, settings, fit_archs=self.fit_archs)
            if reasons:
                raise RuntimeError(f"LatencyProfiler: the table rank 0 left at {self.path} does not apply here: {'; '.join(reasons)}")
            self.latency_table = table
        # Deterministic counts: every rank computes them itself instead of reading files.
        self.flops_table = build_flops_table(supernet, settings.input_size, vocab_size=settings.vocab_size)
        self.params_table = build_params_table(supernet)
        if self._restored is not None and self._restored.get("model") not in (None, self.latency_table.metadata.get("model")):
            rank_zero_warn("LatencyProfiler: the resumed checkpoint was profiled for another supernet than this table's")
        low, _ = self.latency_table.extreme()
        high, _ = self.latency_table.extreme(largest=True)
        fit = self.latency_table.metadata.get("fit") or {}
        fitted = f"; {fit_summary(fit)}" if "chosen" in fit else ""
        rank_zero_info(
            f"LatencyProfiler: latency table {self.path} ({settings.device}, {settings.runtime}, {settings.threads} thread(s), batch {settings.batch_size}, "
            f"input {tuple(settings.input_size)}{'' if settings.vocab_size is None else ' token ids'}): {low:.3f}-{high:.3f} ms over the space{fitted}"
        )

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        metadata = {} if self.latency_table is None else {k: self.latency_table.metadata.get(k) for k in _STATE_METADATA}
        # plain_state: the table's metadata holds a TorchVersion (a str subclass) that weights_only loading refuses.
        return plain_state(
            {"path": str(self.path), "input_size": None if self.input_size is None else list(self.input_size), "metadata": metadata},
            "LatencyProfiler state",
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("path") not in (None, str(self.path)):
            rank_zero_warn(f"LatencyProfiler: the checkpoint used the table {state_dict['path']}, this run uses {self.path}")
        if self.input_size is None and state_dict.get("input_size") is not None:
            self.input_size = tuple(state_dict["input_size"])
        self._restored = dict(state_dict.get("metadata") or {})
