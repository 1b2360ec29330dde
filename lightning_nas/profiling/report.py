"""How well a latency table predicts real latency: MAPE against end-to-end measurements.

BINAS predicts a subnet's latency as the sum of its blocks' isolated timings plus a constant
(Eq. 5). :func:`check_latency` measures random exported subnets end to end with the table's own
settings and compares.

A shared machine's speed drifts (10-20 % within a minute on a busy VM), so a check made minutes
after the build mixes the table's error with the machine's. The table's calibration subnets are
timed again in the same interleaved rounds as the checked ones: the median ratio of their time
now to their time during the build is the machine's ``speed`` factor, and
``LatencyCheck.mape_at_build_speed`` is the error once the predictions are scaled by it (the
table's own error), next to the raw ``mape`` (what a budget set now would see).

Example::

    check = check_latency(supernet, table, num_archs=30, seed=1)
    print(f"MAPE {check.mape:.2f} % over {len(check)} subnets")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_nas.bilinear import BilinearTable
from lightning_nas.profiling.tables import CALIBRATION_STREAM, settings_of, time_archs
from lightning_nas.profiling.timing import ProfileSettings
from lightning_nas.seeding import derive_seed
from lightning_nas.spaces.staged import StagedSpace
from lightning_nas.supernet import Supernet

__all__ = [
    "AUTO_ARCHS_PER_COEFFICIENT", "CALIBRATION_TERMS", "LatencyCheck", "ReferenceTimer", "TimedVerify", "calibrate_latency", "check_latency",
    "mape", "per_block_terms",
]

# Separate from the table's calibration stream (0), so checked archs are drawn independently.
CHECK_STREAM = 1


def mape(predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray) -> float:
    """Mean absolute percentage error ``100 · mean(|predicted − measured| / measured)``, in percent.

    Args:
        predicted: ``(N,)`` predictions.
        measured: ``(N,)`` measurements, all positive.

    Raises:
        ValueError: for different lengths, no values, or a non-positive measurement.
    """
    predicted, measured = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if predicted.ndim != 1 or predicted.shape != measured.shape or predicted.size == 0:
        raise ValueError(
            f"`predicted` and `measured` must be non-empty 1-D arrays of the same length, got shapes {predicted.shape} and {measured.shape}"
        )
    if not (np.isfinite(measured).all() and (measured > 0).all()) or not np.isfinite(predicted).all():
        raise ValueError("`measured` must be positive and finite and `predicted` finite")
    return float(100.0 * np.mean(np.abs(predicted - measured) / measured))


@dataclass(frozen=True)
class LatencyCheck:
    """Predicted vs measured latency of some archs.

    Attributes:
        archs: the archs.
        predicted: ``(N,)`` table predictions, in the table's unit (ms).
        measured: ``(N,)`` end-to-end times (ms), the same statistic as the table's entries.
        p10, p90: ``(N,)`` spread of each measurement (ms).
        speed: how much slower the machine ran during the check than during the table's build
            (median over the re-timed calibration subnets of time now / time at build; 1.0 when
            they were not re-timed).
    """

    archs: list[dict[str, Any]]
    predicted: np.ndarray
    measured: np.ndarray
    p10: np.ndarray
    p90: np.ndarray
    speed: float = 1.0

    def __len__(self) -> int:
        return len(self.archs)

    @property
    def mape(self) -> float:
        """Mean absolute percentage error, in percent."""
        return mape(self.predicted, self.measured)

    @property
    def mape_at_build_speed(self) -> float:
        """MAPE of the predictions scaled by ``speed``, in percent: the table's error with the
        machine's drift between the build and the check taken out."""
        return mape(self.speed * self.predicted, self.measured)

    @property
    def errors(self) -> np.ndarray:
        """``(N,)`` signed relative errors ``(predicted − measured) / measured``, in percent."""
        return 100.0 * (self.predicted - self.measured) / self.measured

    @property
    def pairs(self) -> list[tuple[dict[str, Any], float, float]]:
        """``(arch, predicted, measured)`` per arch."""
        return [(a, float(p), float(m)) for a, p, m in zip(self.archs, self.predicted, self.measured)]

    def calibrated(self, table: BilinearTable, terms: str = "auto") -> BilinearTable:
        """``table`` refitted to these measurements: :func:`calibrate_latency` with this check's archs."""
        return calibrate_latency(table, self.archs, self.measured, terms=terms)

    def fastest_of(self, other: LatencyCheck) -> LatencyCheck:
        """Each arch's faster measurement of this check and ``other`` (a check of the same archs, in the
        same order, by the same table and settings), with the spread of the run that gave it.

        Another job on the machine lengthens calls, so the faster of two timings taken at different
        moments is the less disturbed one, with a statistic that a spell of the machine running
        faster than usual hardly shortens (``median_of_mins``; it set ``min`` times 40 % low on a
        virtual machine); ``speed`` is the faster check's. Raises ``ValueError`` when the archs differ.
        """
        if not isinstance(other, LatencyCheck):
            raise ValueError(f"`other` must be a LatencyCheck, got {type(other).__name__}")
        if list(self.archs) != list(other.archs):
            raise ValueError("`other` must be a check of the same archs in the same order")
        mine = self.measured <= other.measured
        return LatencyCheck(archs=self.archs, predicted=self.predicted, measured=np.where(mine, self.measured, other.measured),
                            p10=np.where(mine, self.p10, other.p10), p90=np.where(mine, self.p90, other.p90),
                            speed=min(self.speed, other.speed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mape_percent": self.mape,
            "speed": self.speed,
            "mape_at_build_speed_percent": self.mape_at_build_speed,
            "max_abs_error_percent": float(np.abs(self.errors).max()),
            "archs": [
                {"arch": a, "predicted_ms": float(p), "measured_ms": float(m), "p10_ms": float(lo), "p90_ms": float(hi)}
                for a, p, m, lo, hi in zip(self.archs, self.predicted, self.measured, self.p10, self.p90)
            ],
        }


def check_latency(
    supernet: Supernet,
    table: BilinearTable,
    *,
    num_archs: int = 30,
    seed: int = 0,
    archs: Sequence[Mapping[str, Any]] | None = None,
    settings: ProfileSettings | None = None,
    drift_reference: bool = True,
) -> LatencyCheck:
    """Time random exported subnets end to end and compare with ``table.predict``.

    Args:
        supernet: the supernet the table was built for.
        table: a latency table (:func:`~lightning_nas.profiling.build_latency_table`).
        num_archs: how many uniformly random archs (ignored when ``archs`` is given).
        seed: their seed (drawn from another stream than the table's calibration archs).
        archs: explicit archs instead of random ones.
        settings: measurement settings (default: the table's own, from its metadata).
        drift_reference: also time the table's calibration subnets again, in the same rounds, to
            measure the machine's ``speed`` relative to the build (ignored for a table whose
            metadata lacks them).
    """
    if archs is None:
        if not isinstance(num_archs, int) or isinstance(num_archs, bool) or num_archs < 1:
            raise ValueError(f"`num_archs` must be an int >= 1, got {num_archs!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")
        archs = supernet.space.sample_many(num_archs, derive_seed(seed, CHECK_STREAM))
    archs = [supernet.space.validate(a) for a in archs]
    if not archs:
        raise ValueError("`archs` must hold at least one architecture")
    settings = settings or settings_of(table)
    reference = calibration_times(supernet, table, settings.statistic) if drift_reference else None
    extra = [] if reference is None else reference[0]
    # One call: the checked and the re-timed calibration subnets share the interleaved rounds.
    timings = time_archs(supernet, list(archs) + extra, settings, seed=seed)
    timings, again = timings[: len(archs)], timings[len(archs) :]
    speed = 1.0
    if reference is not None:
        speed = float(np.median(np.array([t.value(settings.statistic) for t in again]) / reference[1]))
    return LatencyCheck(
        archs=archs,
        predicted=table.predict_many(archs),
        measured=np.array([t.value(settings.statistic) for t in timings]),
        p10=np.array([t.p10_ms for t in timings]),
        p90=np.array([t.p90_ms for t in timings]),
        speed=speed,
    )


def calibration_times(supernet: Supernet, table: BilinearTable, statistic: str) -> tuple[list[dict[str, Any]], np.ndarray] | None:
    """The table's calibration archs and their end-to-end ``statistic`` (ms, ``(K,)``) as measured
    during the build, recovered from the metadata; ``None`` for a table without them (one not
    made by ``build_latency_table``)."""
    meta = table.metadata or {}
    try:
        estimate = meta["constant_estimate"]
        count, seed = int(estimate["calibration_archs"]), int(meta["seed"])
        residuals = np.asarray(estimate["residuals_by_statistic_ms"][statistic], dtype=np.float64)
        blocks = np.asarray(meta["spread"][statistic], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    if residuals.shape != (count,) or blocks.shape != table.block.shape:
        return None
    archs = supernet.space.sample_many(count, derive_seed(seed, CALIBRATION_STREAM))
    built = residuals + BilinearTable(table.staged, 0.0, blocks, name="latency").predict_many(archs)
    return (archs, built) if (np.isfinite(built).all() and (built > 0).all()) else None

#: What :func:`calibrate_latency` fits besides the table itself (see its ``terms``).
CALIBRATION_TERMS = ("auto", "scale", "blocks", "decisions")
#: ``terms="auto"`` fits the richest terms with at least this many measured archs per coefficient (the
#: usual rule of thumb for a regression's size: fewer, and the terms fit the timings' noise).
AUTO_ARCHS_PER_COEFFICIENT = 10


def calibrate_latency(table: BilinearTable, archs: Sequence[Mapping[str, Any]], measured: Sequence[float] | np.ndarray, *,
                      terms: str = "auto") -> BilinearTable:
    """The latency table refitted to end-to-end measurements by least squares.

    Blocks timed alone and whole subnets timed now differ by a fixed part (stem, head, call
    overhead) and by a factor (cache and memory traffic inside a whole network, and the machine's
    speed now against its speed during the build): ``terms="scale"`` fits ``a + b · table``, which
    keeps the table's ranking of blocks and puts its predictions in the units of the measurements.

    They also differ per block: a block inside a network pays its own call and memory overheads,
    which timing it alone gets wrong by an amount of its own. ``"blocks"`` adds ``c`` per running
    block; ``"decisions"`` adds that and, for each decision kind (a label's last part, e.g. ``se``
    in ``stage0.block1.se``) and value, ``c_v`` per running block set to it (see :func:`per_block_terms`).
    A search picks archs unlike random ones (the demo's picks run more blocks and fewer SE modules
    than random subnets of the same latency), so a per-block error that averages out over random
    archs does not average out at the picks: in the demo's space (4 runs, each calibrated on 100
    random subnets, timed on the accuracy table's 3 best archs under 9 budgets) the scale alone
    under-predicted those archs by 0.0-1.6 % (median per run; 0.8 % on average) while it was unbiased on
    random archs; with ``"decisions"`` they were off by -1.0 to +0.3 % (0.4 % on average, either way).
    The scale is fitted first and the terms to what it leaves: fitted together they take its place
    (a table's entries are nearly a sum of such terms). Each term stays a table entry, so the result
    is an additive table the solvers use as before. A term that the measured archs cannot tell
    apart from the others (constant over them, or a sum of them) is left out (its coefficient 0). ``"auto"`` (the default) fits the richest of ``"decisions"``,
    ``"blocks"`` and ``"scale"`` with at least 10 measured archs per coefficient (the demo's space:
    5 coefficients for ``"decisions"``, so 50 archs; a space whose blocks have many widths needs more).

    Args:
        table: a latency table (identity link).
        archs: ``N`` archs of its space, measured end to end: at least 2, and, for ``"blocks"`` or
            ``"decisions"``, at least twice the number of coefficients they fit (2 for the scale).
        measured: ``(N,)`` their times, in the table's unit, the same statistic as the table.
        terms: ``"auto"``, ``"scale"``, ``"blocks"`` or ``"decisions"`` (see above).

    Returns:
        A new table: every block and depth term times ``b``, plus each block entry's per-block
        terms; constant ``a + b · constant``. ``metadata["calibration"]`` holds ``offset`` (``a``),
        ``scale`` (``b``), ``terms`` (the ones fitted: never ``"auto"``), ``per_block``
        (``{"block": c, "se=True": c_v, ...}``, in the table's unit, only the terms fitted),
        ``archs`` (``N``), the fit's residuals and MAPE before and after.

    Raises:
        ValueError: too few archs, lengths that differ, non-positive or non-finite times,
            predictions that do not vary (no scale to fit), a fitted scale that is not positive,
            or an unknown ``terms``.
    """
    if not isinstance(table, BilinearTable) or table.link != "identity":
        raise ValueError("`table` must be an additive BilinearTable (link 'identity'), such as a latency table")
    if terms not in CALIBRATION_TERMS:
        raise ValueError(f"`terms` must be one of {CALIBRATION_TERMS}, got {terms!r}")
    archs = list(archs)
    measured = np.asarray(measured, dtype=np.float64)
    if measured.ndim != 1 or len(archs) != measured.size or measured.size < 2:
        raise ValueError(f"`archs` and `measured` must have the same length >= 2, got {len(archs)} and {measured.shape}")
    if not (np.isfinite(measured).all() and (measured > 0).all()):
        raise ValueError("`measured` must hold positive finite times")
    predicted = table.predict_many(archs)
    if np.ptp(predicted) <= 1e-12 * max(abs(predicted).max(), 1.0):
        raise ValueError("the table predicts the same value for every calibration arch; give archs of different sizes")
    scale, offset = np.polyfit(predicted, measured, 1)
    if not scale > 0:
        raise ValueError(f"the least-squares scale is {scale:.4g}: the table does not order these archs like the "
                         "measurements; re-measure on a quieter machine or rebuild the table")
    # The per-block terms fit what the scale leaves: fitted with it, on the demo's 100 random subnets,
    # they took its place (it fell from ~0.95 to 0.40-0.86, and once below 0).
    residuals = measured - (offset + scale * predicted)
    for kind in (("decisions", "blocks", "scale") if terms == "auto" else (terms,)):
        names, members = per_block_terms(table.staged, kind)
        counts = _term_counts(table.staged, members, archs)
        design, kept = np.ones((len(archs), 1)), []
        for f in range(len(names)):  # a term the archs cannot tell apart from the columns before it is left out
            candidate = np.column_stack([design, counts[:, f]])
            if np.linalg.matrix_rank(candidate) == candidate.shape[1]:
                design, kept = candidate, kept + [f]
        coefficients = design.shape[1] + 1
        if kind == "scale" or measured.size >= (AUTO_ARCHS_PER_COEFFICIENT if terms == "auto" else 2) * coefficients:
            break
        if terms != "auto":
            raise ValueError(f"`terms={terms!r}` fits {coefficients} coefficients here; give at least {2 * coefficients} "
                             f"measured archs (got {measured.size}), or use terms='auto' or 'scale'")
    coef = np.linalg.lstsq(design, residuals, rcond=None)[0]
    offset, extra = float(offset + coef[0]), coef[1:]
    residuals = residuals - design @ coef
    fitted = measured - residuals
    block = scale * table.block + (members[..., kept] @ extra if kept else 0.0)
    metadata = {**table.metadata, "calibration": {
        "offset": offset, "scale": float(scale), "terms": kind, "per_block": {names[f]: float(c) for f, c in zip(kept, extra)},
        "archs": len(archs), "residuals": residuals.tolist(),
        "mape_before_percent": mape(predicted, measured), "mape_after_percent": mape(fitted, measured),
    }}
    return BilinearTable(table.staged, offset + scale * table.constant, block, scale * table.depth,
                         name=table.name, unit=table.unit, metadata=metadata)


def per_block_terms(staged: StagedSpace, terms: str) -> tuple[list[str], np.ndarray]:
    """The per-block terms of :func:`calibrate_latency`: their names and ``(S, D, C, F)`` membership
    (1.0 where configuration ``c`` of block ``b`` of stage ``s`` pays term ``f`` when it runs).

    ``"blocks"``: one term, ``"block"``. ``"decisions"``: that, then ``"kind=value"`` for every
    decision kind and value, those that are some decision's first value last (a kind's values add up
    to its blocks, so the fit leaves out one of them: the default one, where there is a choice).
    """
    if terms not in ("scale", "blocks", "decisions"):
        raise ValueError(f"`terms` must be 'scale', 'blocks' or 'decisions', got {terms!r}")
    if terms == "scale":
        return [], np.zeros((staged.num_stages, staged.max_blocks, staged.num_configs, 0))
    cells: list[tuple[int, int, int, str]] = []
    order: dict[str, tuple[bool, int]] = {"block": (False, -1)}  # name -> (only ever a first value, first seen)
    for s, stage in enumerate(staged.stages):
        for b, labels in enumerate(stage.block_labels):
            for c, values in enumerate(stage.configs[b]):
                cells.append((s, b, c, "block"))
                if terms != "decisions":
                    continue
                for label, value in zip(labels, values):
                    name = f"{label.rsplit('.', 1)[-1]}={value}"
                    first = value == staged.space[label].values[0]
                    seen_first, seen = order.get(name, (True, len(order)))
                    order[name] = (seen_first and first, seen)
                    cells.append((s, b, c, name))
    names = sorted(order, key=order.__getitem__)
    index = {name: f for f, name in enumerate(names)}
    members = np.zeros((staged.num_stages, staged.max_blocks, staged.num_configs, len(names)))
    for s, b, c, name in cells:
        members[s, b, c, index[name]] = 1.0
    return names, members


def _term_counts(staged: StagedSpace, members: np.ndarray, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``(N, F)``: how many of each arch's running blocks pay each term."""
    configs, depths = staged.indices_many(archs)
    running = staged.active(depths) & (configs >= 0)
    s, b = np.meshgrid(np.arange(staged.num_stages), np.arange(staged.max_blocks), indexing="ij")
    per_block = members[s, b, np.maximum(configs, 0)]  # (N, S, D, F)
    return (per_block * running[..., None]).sum((1, 2))


class ReferenceTimer:
    """Times archs beside reference subnets and scales the times to the machine's speed when those
    references were first timed: measurements taken minutes apart on a shared machine become comparable.

    Each attempt times the archs and the references together (interleaved rounds, ``settings.statistic``
    of ``settings.repeats`` calls); the machine's speed during that attempt is the median over the
    references of their time now / their time then, and each arch's time is divided by it. An arch's
    time is the median of those scaled times over the attempts. Scaling each attempt by its own
    references cancels what the machine did during it (another job, or the virtual machine running
    ~40 % faster than usual for a spell), and the median outvotes an attempt in which the arch and its
    references were not hit alike. Keeping each arch's fastest time over the attempts (and scaling by
    the references' fastest) did not: a spell that caught the arch or the references alone in one
    attempt moved the arch's scaled time by up to 1.5x (a README demo's pick verified at 0.95 of its
    budget was re-measured that way at 1.10; in 14 repetitions on an idle machine one came out 34 % low).
    ``benchmarks/reference_timing.py`` compares the two on the same timings: idle, 3.0 % against 4.1 %
    at worst and 4 % against 17 % of the repetitions more than 3 % off in one run, both within 2 % in
    a quieter one, where a 13 % speed change between the references' first timing and the check
    shifted the scaled times by 0.6 %. A latency budget set from the references' first timings (e.g.
    quantiles of random subnets) is then checked in the same units.

    Args:
        supernet: the supernet the archs belong to.
        settings: how to time (usually the latency table's, :func:`~lightning_nas.profiling.settings_of`).
        references: ``K >= 1`` archs timed before (e.g. some of the random subnets a table was calibrated on).
        reference_ms: ``(K,)`` their times then, in ms, the same statistic.
        attempts: most interleaved timings per call (at least 1).
        min_attempts: fewest timings before a caller's ``done`` may stop them: the median needs a few
            timings to outvote a disturbed one, and with one a disturbed reference made a pick look fast.
        seed: seed of the random inputs and of the timing order (a stream per attempt).

    Example::

        timer = ReferenceTimer(supernet, settings_of(table), randoms[:10], check.measured[:10])
        search_constrained(accuracy, Limit(table, upper=2.0), verify=timer.verifier(bound=2.0))
    """

    def __init__(self, supernet: Supernet, settings: ProfileSettings, references: Sequence[Mapping[str, Any]],
                 reference_ms: Sequence[float] | np.ndarray, *, attempts: int = 3, min_attempts: int = 1, seed: int = 0) -> None:
        self.references = [supernet.space.validate(a) for a in references]
        self.reference_ms = np.asarray(reference_ms, dtype=np.float64)
        if not self.references or self.reference_ms.shape != (len(self.references),):
            raise ValueError(f"`references` and `reference_ms` must have the same length >= 1, got {len(self.references)} "
                             f"and shape {self.reference_ms.shape}")
        if not (np.isfinite(self.reference_ms).all() and (self.reference_ms > 0).all()):
            raise ValueError("`reference_ms` must hold positive finite times")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"`attempts` must be an int >= 1, got {attempts!r}")
        if isinstance(min_attempts, bool) or not isinstance(min_attempts, int) or not 1 <= min_attempts <= attempts:
            raise ValueError(f"`min_attempts` must be an int in [1, attempts={attempts}], got {min_attempts!r}")
        self.supernet, self.settings, self.attempts, self.min_attempts, self.seed = supernet, settings, attempts, min_attempts, seed
        self.spent = 0  # interleaved timings run so far, over all calls
        #: The last call's raw times in ms, ``(attempts run, N + K)``: one row per timing, the archs then the references.
        self.last_ms = np.zeros((0, len(self.references)))

    @classmethod
    def near(cls, target_ms: float, supernet: Supernet, settings: ProfileSettings, archs: Sequence[Mapping[str, Any]],
             archs_ms: Sequence[float] | np.ndarray, count: int, **kwargs: Any) -> "ReferenceTimer":
        """A timer whose references are the ``count`` of ``archs`` (timed before at ``archs_ms``, ``(N,)`` in ms)
        closest in time to ``target_ms``: archs timed against a budget near ``target_ms`` are then scaled by
        subnets of about their size. When the machine's speed changed within a run, references of any size
        left whole pools of picks 10-15 % above their predictions: small and large subnets need not slow down
        by the same factor. ``kwargs`` go to the constructor."""
        archs_ms = np.asarray(archs_ms, dtype=np.float64)
        if archs_ms.shape != (len(archs),):
            raise ValueError(f"`archs_ms` must have one time per arch ({len(archs)}), got shape {archs_ms.shape}")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(archs):
            raise ValueError(f"`count` must be an int in [1, {len(archs)}] (the archs given), got {count!r}")
        # Stable sort: ties keep the archs' order, so the choice depends on the timings alone.
        closest = np.argsort(np.abs(archs_ms - target_ms), kind="stable")[:count]
        return cls(supernet, settings, [archs[i] for i in closest], archs_ms[closest], **kwargs)

    def __call__(self, archs: Sequence[Mapping[str, Any]], done: Callable[[np.ndarray], bool] | None = None) -> tuple[np.ndarray, float]:
        """``(N,)`` times of ``archs`` in ms at the references' first speed, and the machine's speed then (now / then,
        the median over the attempts).

        ``done(times)``, asked after each attempt from the ``min_attempts``-th on with the times so far,
        stops the attempts early (e.g. once every arch is within its budget).
        """
        archs = list(archs)
        scaled, speeds, raw = [], [], []
        for attempt in range(self.attempts):
            # A new seed each attempt, so each draws its own orders of the interleaved rounds.
            timed = time_archs(self.supernet, archs + self.references, self.settings, seed=derive_seed(self.seed, attempt))
            self.spent += 1
            now = np.array([t.value(self.settings.statistic) for t in timed])
            raw.append(now)
            self.last_ms = np.array(raw)
            speeds.append(float(np.median(now[len(archs):] / self.reference_ms)))
            scaled.append(now[: len(archs)] / speeds[-1])
            times = np.median(scaled, axis=0)
            if done is not None and attempt + 1 >= self.min_attempts and done(times):
                break
        return times, float(np.median(speeds))

    def verifier(self, bound: float | None = None, name: str = "latency", margin: float = 0.03) -> TimedVerify:
        """A ``verify`` for :func:`~lightning_nas.solvers.search_constrained`: ``arch -> {name: ms}``, and a
        solution pool timed side by side in one call (``many``). With ``bound`` (ms), the attempts stop
        once the timings settle which arch is kept: see :meth:`TimedVerify.many`."""
        return TimedVerify(self, bound, name, margin)


class TimedVerify:
    """``verify`` of a :class:`ReferenceTimer` (see :meth:`ReferenceTimer.verifier`)."""

    def __init__(self, timer: ReferenceTimer, bound: float | None, name: str, margin: float = 0.03) -> None:
        if bound is not None and not (np.isfinite(bound) and bound > 0):
            raise ValueError(f"`bound` must be a positive finite time in ms or None, got {bound!r}")
        if not (np.isfinite(margin) and 0 <= margin < 1):
            raise ValueError(f"`margin` must be a fraction in [0, 1), got {margin!r}")
        self.timer, self.bound, self.name, self.margin = timer, bound, name, margin

    def __call__(self, arch: Mapping[str, Any]) -> dict[str, float]:
        return self.many([arch])[0]

    def settled(self, ms: np.ndarray) -> bool:
        """Whether more timings can no longer change which of the archs timed at ``ms`` (``(N,)``, in
        order of preference) is kept, the first one within the bound.

        An arch's time is a median over timings, which moves little once a few are in: one within
        ``bound * (1 - margin)`` is taken to stay within the bound, one above ``bound * (1 + margin)``
        to stay above. Settled: the first arch not clearly over is clearly within, or every arch is
        clearly over.
        """
        for t in ms:
            if t <= self.bound * (1 - self.margin):
                return True
            if t <= self.bound * (1 + self.margin):
                return False
        return True

    def many(self, archs: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
        """Times ``archs`` together, beside the references: ``[{name: ms}, ...]`` in their order.

        With a bound, ``archs`` come in order of preference (a solution pool, best first, as
        :func:`~lightning_nas.solvers.search_constrained` verifies it) and the attempts stop once they
        are :meth:`settled`: a pool whose best arch is far within the bound costs the timer's
        ``min_attempts``, not all of its attempts.
        """
        times, _ = self.timer(archs, None if self.bound is None else self.settled)
        return [{self.name: float(t)} for t in times]
