"""lightning_nas: neural architecture search as PyTorch Lightning callbacks.

Wrap ordinary ``nn.Module`` code into weight-sharing supernets with the mutable API, train them
with callbacks on any ``Trainer``, and export subnets as plain networks with inherited weights.
"""

from lightning_nas.nn import (
    Choice,
    DepthChoice,
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticMLP,
    ElasticMultiheadAttention,
    ElasticTransformerEncoder,
    InputChoice,
    OpChoice,
    SkipChoice,
    elastic_kernel,
    mutate,
    recalibrate_batch_norm,
    rules,
)
from lightning_nas.bilinear import BilinearTable
from lightning_nas.distillation import inplace_distillation_loss
from lightning_nas.dynamic import DynamicNetwork, SwitchReport
from lightning_nas.solvers import (
    InfeasibleError,
    Limit,
    NotOptimalError,
    NotOptimalWarning,
    SearchResult,
    SolverLicenseError,
    miqcp_solvers,
    pareto_sweep,
    search_constrained,
)
from lightning_nas.spaces import SearchSpace
from lightning_nas.spaces.staged import StagedSpace
from lightning_nas.supernet import Supernet, find_supernet

__version__ = "0.1.0"

__all__ = [
    "BilinearTable",
    "DynamicNetwork",
    "SwitchReport",
    "InfeasibleError",
    "Limit",
    "NotOptimalError",
    "NotOptimalWarning",
    "SearchResult",
    "SolverLicenseError",
    "miqcp_solvers",
    "StagedSpace",
    "pareto_sweep",
    "search_constrained",
    "Choice",
    "DepthChoice",
    "ElasticBatchNorm2d",
    "ElasticConv2d",
    "ElasticLayerNorm",
    "ElasticLinear",
    "ElasticMLP",
    "ElasticMultiheadAttention",
    "ElasticTransformerEncoder",
    "SkipChoice",
    "InputChoice",
    "OpChoice",
    "SearchSpace",
    "Supernet",
    "find_supernet",
    "inplace_distillation_loss",
    "elastic_kernel",
    "mutate",
    "recalibrate_batch_norm",
    "rules",
]
