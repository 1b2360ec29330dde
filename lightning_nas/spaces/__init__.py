"""Search spaces: the ``SearchSpace`` interface and registered supernet builders."""

from lightning_nas.spaces.registry import SPACES, create_space, list_spaces, register_space
from lightning_nas.spaces.search_space import Decision, SearchSpace
from lightning_nas.spaces.mobilenet import InvertedResidual, MobileNetLike, make_divisible, mobilenet_supernet  # isort: skip

__all__ = [
    "SPACES",
    "Decision",
    "InvertedResidual",
    "MobileNetLike",
    "SearchSpace",
    "create_space",
    "list_spaces",
    "make_divisible",
    "mobilenet_supernet",
    "register_space",
]
