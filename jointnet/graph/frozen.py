"""`FrozenDict` and `freeze`: immutable, hashable containers for annotation and log data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

__all__ = ["FrozenDict", "freeze", "thaw"]


class FrozenDict(Mapping):
    """A hashable, read-only dict that keeps insertion order.

    >>> FrozenDict(a=1).set("b", 2)
    FrozenDict({'a': 1, 'b': 2})
    """

    __slots__ = ("_d", "_h")

    def __init__(self, *args: Any, **kwargs: Any):
        if len(args) == 1 and not kwargs and type(args[0]) is FrozenDict:
            self._d = args[0]._d  # never mutated: share it
        else:
            self._d = dict(*args, **kwargs)
        self._h = None

    @classmethod
    def wrap(cls, d: dict) -> "FrozenDict":
        """A FrozenDict over `d` itself, without a copy: the caller must never change `d` again."""
        out = cls.__new__(cls)
        out._d = d
        out._h = None
        return out

    def to_dict(self) -> dict:
        """A new plain dict with the same items (a C-level copy)."""
        return dict(self._d)

    def keys(self):
        return self._d.keys()

    def values(self):
        return self._d.values()

    def items(self):
        return self._d.items()

    def get(self, key: Any, default: Any = None) -> Any:
        return self._d.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __getitem__(self, key: Any) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        if self._h is None:
            self._h = hash(frozenset(self._d.items()))
        return self._h

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._d == other._d
        return isinstance(other, Mapping) and self._d == dict(other)

    def __repr__(self) -> str:
        return f"FrozenDict({self._d!r})"

    def set(self, key: Any, value: Any) -> "FrozenDict":
        """A copy with `key` set to `value`."""
        d = dict(self._d)
        d[key] = value
        return FrozenDict(d)

    def without(self, *keys: Any) -> "FrozenDict":
        """A copy without `keys` (missing keys are ignored)."""
        return FrozenDict({k: v for k, v in self._d.items() if k not in keys})


def freeze(value: Any) -> Any:
    """Deep-convert lists to tuples and dicts to `FrozenDict`; other values pass through."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    return value


def thaw(value: Any) -> Any:
    """The inverse of `freeze`: tuples to lists and mappings to dicts, deeply."""
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value
