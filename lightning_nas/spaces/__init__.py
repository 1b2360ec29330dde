"""Search spaces: the ``SearchSpace`` interface and registered supernet builders."""

from lightning_nas.spaces.search_space import Decision, SearchSpace

__all__ = ["Decision", "SearchSpace"]
