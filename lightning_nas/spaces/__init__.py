"""Search spaces: the ``SearchSpace`` interface and registered supernet builders."""

from lightning_nas.spaces.search_space import Decision, SearchSpace
from lightning_nas.spaces.mobilenet import InvertedResidual, MobileNetLike, make_divisible, mobilenet_supernet  # isort: skip

__all__ = ["Decision", "InvertedResidual", "MobileNetLike", "SearchSpace", "make_divisible", "mobilenet_supernet"]
