"""A detectron2 Registry whose entries can also be registered under a short name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from detectron2.utils.registry import Registry

T = TypeVar("T")


class NamedRegistry(Registry):
    """Registry with `register_as(name)`, for keys that are data values (an annotation "type",
    a dataset's `evaluator_type`) rather than class names."""

    def register_as(self, name: str) -> Callable[[T], T]:
        """Decorator registering its object under `name`."""

        def deco(obj: T) -> T:
            self._do_register(name, obj)
            return obj

        return deco

    def names(self) -> list[str]:
        """Sorted registered names (for error messages)."""
        return sorted(name for name, _ in self)
