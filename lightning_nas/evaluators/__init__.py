"""Evaluators: what a search strategy's proposals are measured with (a table lookup or real training)."""

from lightning_nas.evaluators.tabular import (
    NB201_COST_COLUMNS,
    MissingColumnError,
    TabularBenchmark,
    TabularEvaluator,
    infer_columns,
)
from lightning_nas.evaluators.training import EpochShuffle, TrainingEvaluator

__all__ = ["NB201_COST_COLUMNS", "EpochShuffle", "MissingColumnError", "TabularBenchmark", "TabularEvaluator",
           "TrainingEvaluator", "infer_columns"]
