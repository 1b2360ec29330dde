"""Lightning callbacks: they find the ``Supernet`` in any LightningModule and never wrap it."""

from lightning_nas.callbacks.contribution import ContributionEstimation
from lightning_nas.callbacks.latency import LatencyProfiler
from lightning_nas.callbacks.sampling import UniformSampling

__all__ = ["ContributionEstimation", "LatencyProfiler", "UniformSampling"]
