"""A registry: named entries of one kind (backbones, head kinds, variants), read as a mapping, extended with
:meth:`Registry.register`. The built-in entries cannot be replaced or removed."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """``kind`` names the entries in messages ('backbone', 'head kind', 'FCN variant')."""

    def __init__(self, kind: str, entries: Mapping[str, T]):
        self.kind = kind
        self._entries = dict(entries)
        self._builtin = frozenset(self._entries)
        self.names: Sequence[str] = _Names(self._entries)  # a live view: registering adds to it

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: str) -> T:
        """The entry called ``name``, else a one-line ValueError naming the choices."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {tuple(self._entries)}")
        return self._entries[name]

    def register(self, name: str, value: T) -> T:
        """Adds ``value`` as ``name`` (registering the same value again is a no-op); returns it."""
        if name in self._entries and self._entries[name] is not value and self._entries[name] != value:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = value
        return value

    def unregister(self, name: str) -> None:
        """Removes an entry added with :meth:`register` (the built-in ones stay)."""
        if name in self._builtin:
            raise ValueError(f"{name!r} is a built-in {self.kind}")
        self._entries.pop(name, None)


class _Names(Sequence):
    """The names of a registry, in registration order, as a tuple-like live view."""

    def __init__(self, entries: Mapping[str, object]):
        self._entries = entries

    def __getitem__(self, index):  # type: ignore[override]
        return tuple(self._entries)[index]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, _Names)) else other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))
