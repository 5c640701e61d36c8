"""A tiny name -> object registry shared by datasets, models, scores, allocations, methods,
channel scores, channel selections (ThiNet, LASSO) and pipelines.

The CLI and YAML specs refer to things by these names; an unknown name is a `KeyError` whose
message lists every valid name, so a typo is answered with the choices.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, List, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name. ``str(err)`` is the plain message (KeyError would quote it)."""

    def __str__(self) -> str:  # KeyError.__str__ adds quotes around the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to objects. ``kind`` names what is registered, for error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` (or the object's ``__name__``)."""

        def add(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if not isinstance(name, str) or name not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
