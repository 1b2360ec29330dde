"""Black-box search strategies behind one ask/tell interface, a driver with budgets, and storage."""

from lightning_nas.strategies.base import BatchStrategy, Constraint, Observation, Proposal, Strategy
from lightning_nas.strategies.bo import (ACQUISITIONS, TARGET_SCALES, BayesianOptimization, acquisition, normal_scores,
                                         pretraining_targets)
from lightning_nas.strategies.candidates import CandidatePool, one_hot
from lightning_nas.strategies.driver import Budget, EvaluationError, run_search
from lightning_nas.strategies.ensemble import DeepEnsemble, fit_ensemble, masked_huber
from lightning_nas.strategies.evolution import RegularizedEvolution
from lightning_nas.strategies.exploration import (check_stall_arguments, evaluations_since_improvement, hamming_to,
                                                  select_batch)
from lightning_nas.strategies.layernas import LayerNAS, cost_bucket
from lightning_nas.strategies.random_search import RandomSearch
from lightning_nas.strategies.rank_nosh import RankNOSH, pairwise_ranking_loss
from lightning_nas.strategies.results import SearchResults, pareto_mask
from lightning_nas.strategies.storage import SQLiteStorage, Storage, TrialRecord

__all__ = [
    "ACQUISITIONS",
    "BatchStrategy",
    "BayesianOptimization",
    "Budget",
    "CandidatePool",
    "Constraint",
    "DeepEnsemble",
    "EvaluationError",
    "LayerNAS",
    "Observation",
    "Proposal",
    "RandomSearch",
    "RankNOSH",
    "RegularizedEvolution",
    "SQLiteStorage",
    "SearchResults",
    "Storage",
    "Strategy",
    "TARGET_SCALES",
    "TrialRecord",
    "acquisition",
    "check_stall_arguments",
    "cost_bucket",
    "evaluations_since_improvement",
    "fit_ensemble",
    "hamming_to",
    "masked_huber",
    "normal_scores",
    "one_hot",
    "pairwise_ranking_loss",
    "pareto_mask",
    "pretraining_targets",
    "run_search",
    "select_batch",
]
