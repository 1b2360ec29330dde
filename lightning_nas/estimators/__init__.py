"""Accuracy estimators: BINAS's bilinear contribution table, MathNAS's block performances, learned
baselines and ranking reports."""

from lightning_nas.estimators.block_performance import (
    BlockPerformance,
    MathNASPredictor,
    estimate_block_performance,
    estimate_block_performance_sampled,
    mean_flops,
    nodes_as_stage,
    supernet_evaluator,
    tabular_evaluator,
)

from lightning_nas.estimators.contributions import (
    Conditional,
    ContributionAccumulator,
    SmoothedTop1,
    StagedIndexer,
    ablate,
    conditioning_depths,
    estimate_contributions,
    estimate_one_pass,
    estimate_paper_protocol,
    paper_protocol_conditionals,
    paper_protocol_passes,
    shrink_gains,
    to_vector_form,
    top1_correct,
)
from lightning_nas.estimators.ranking import (
    kendall_tau,
    measure_subnet_accuracies,
    rank_correlations,
    ranking_report,
    spearman_rho,
    table2_predictors,
)
from lightning_nas.estimators.regression import BilinearRegression, QuadraticRegression, bilinear_features, quadratic_features

__all__ = [
    "BilinearRegression",
    "BlockPerformance",
    "MathNASPredictor",
    "Conditional",
    "ContributionAccumulator",
    "SmoothedTop1",
    "QuadraticRegression",
    "StagedIndexer",
    "ablate",
    "bilinear_features",
    "conditioning_depths",
    "estimate_block_performance",
    "estimate_block_performance_sampled",
    "estimate_contributions",
    "estimate_one_pass",
    "estimate_paper_protocol",
    "kendall_tau",
    "mean_flops",
    "measure_subnet_accuracies",
    "nodes_as_stage",
    "paper_protocol_conditionals",
    "paper_protocol_passes",
    "quadratic_features",
    "rank_correlations",
    "ranking_report",
    "shrink_gains",
    "spearman_rho",
    "supernet_evaluator",
    "tabular_evaluator",
    "table2_predictors",
    "to_vector_form",
    "top1_correct",
]
