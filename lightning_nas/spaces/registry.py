"""Named supernet builders: ``create_space("mobilenet", num_classes=10)``, ``list_spaces()``."""

from __future__ import annotations

from typing import Any

from lightning_nas.registry import Registry

__all__ = ["SPACES", "create_space", "list_spaces", "register_space"]

SPACES: Registry = Registry("space")
register_space = SPACES.register


def create_space(name: str, **kwargs: Any) -> Any:
    """Build the supernet registered as ``name`` with the builder's keyword arguments.

    Raises:
        ValueError: for an unknown name (the message lists the registered ones).
    """
    return SPACES.create(name, **kwargs)


def list_spaces(pattern: str = "*") -> list[str]:
    """Registered space names matching the shell-style ``pattern``, sorted."""
    return SPACES.list(pattern)
