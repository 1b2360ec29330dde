"""Search spaces: the ``SearchSpace`` interface and registered supernet builders."""

from lightning_nas.spaces.registry import SPACES, create_space, list_spaces, register_space
from lightning_nas.spaces.search_space import Decision, SearchSpace
from lightning_nas.spaces.mobilenet import InvertedResidual, MobileNetLike, make_divisible, mobilenet_supernet  # isort: skip
from lightning_nas.spaces.binas import BINAS_PRESETS, BinasBlock, BinasNet, MBInvRes, SqueezeExcite, binas_supernet  # isort: skip

__all__ = [
    "BINAS_PRESETS",
    "SPACES",
    "BinasBlock",
    "BinasNet",
    "Decision",
    "InvertedResidual",
    "MBInvRes",
    "MobileNetLike",
    "SearchSpace",
    "SqueezeExcite",
    "binas_supernet",
    "create_space",
    "list_spaces",
    "make_divisible",
    "mobilenet_supernet",
    "register_space",
]
