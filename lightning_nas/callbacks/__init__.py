"""Lightning callbacks: they find the ``Supernet`` in any LightningModule and never wrap it."""

from lightning_nas.callbacks.sampling import UniformSampling

__all__ = ["UniformSampling"]
