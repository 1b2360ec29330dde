"""Accuracy estimators: BINAS's bilinear contribution table, learned baselines and ranking reports."""

from lightning_nas.estimators.contributions import (
    Conditional,
    ContributionAccumulator,
    StagedIndexer,
    ablate,
    conditioning_depths,
    estimate_contributions,
    estimate_one_pass,
    estimate_paper_protocol,
    paper_protocol_conditionals,
    paper_protocol_passes,
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
    "Conditional",
    "ContributionAccumulator",
    "QuadraticRegression",
    "StagedIndexer",
    "ablate",
    "bilinear_features",
    "conditioning_depths",
    "estimate_contributions",
    "estimate_one_pass",
    "estimate_paper_protocol",
    "kendall_tau",
    "measure_subnet_accuracies",
    "paper_protocol_conditionals",
    "paper_protocol_passes",
    "quadratic_features",
    "rank_correlations",
    "ranking_report",
    "spearman_rho",
    "table2_predictors",
    "to_vector_form",
    "top1_correct",
]
