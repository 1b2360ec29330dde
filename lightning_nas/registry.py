"""The registry behind every extension point (spaces now; solvers, strategies and estimators later)."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Names → builders. ``register`` is a decorator; lookups of unknown names list the known ones.

    Args:
        kind: what is registered, for messages (``"space"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering a builder under ``name`` (default: its ``__name__``); overwriting warns."""

        def decorate(builder: T) -> T:
            key = name or builder.__name__
            if key in self._entries and self._entries[key] is not builder:
                warnings.warn(f"{self.kind} {key!r} was registered again; the new builder replaces the old one", stacklevel=2)
            self._entries[key] = builder
            return builder

        return decorate

    def get(self, name: str) -> T:
        """The builder registered as ``name``. Raises ``ValueError`` listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self._entries)!r}") from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the builder registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries
