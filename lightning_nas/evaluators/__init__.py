"""Evaluators: what a search strategy's proposals are measured with (a table lookup or real training)."""

from lightning_nas.evaluators.tabular import TabularBenchmark

__all__ = ["TabularBenchmark"]
