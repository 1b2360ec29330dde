"""Lightning callbacks: they find the ``Supernet`` in any LightningModule and never wrap it."""

from lightning_nas.callbacks.block_performance import BlockPerformanceEstimation
from lightning_nas.callbacks.contribution import ContributionEstimation
from lightning_nas.callbacks.darts import DartsSearch, DrNASSearch
from lightning_nas.callbacks.latency import LatencyProfiler
from lightning_nas.callbacks.sampling import UniformSampling
from lightning_nas.callbacks.selection import PerturbationSelection

__all__ = [
    "BlockPerformanceEstimation",
    "ContributionEstimation",
    "DartsSearch",
    "DrNASSearch",
    "LatencyProfiler",
    "PerturbationSelection",
    "UniformSampling",
]
