"""Annotation and log values <-> msgpack-ready structures, their types kept exactly.

Plain msgpack scalars stand for themselves, msgpack arrays for tuples and str-keyed maps for
`FrozenDict`s (what `frozen.freeze` makes). Everything else is a one-entry map whose key is a
tag: ``{"__list__": [...]}``, ``{"__dict__": [[k, v], ...]}``, ``{"__map__": [[k, v], ...]}`` (a
FrozenDict that a plain map cannot carry), ``{"__spec__": spec}``, ``{"__tensorref__": key}``,
``{"__init__": init}``, ``{"__int__": "digits"}`` (beyond 64 bits), ``{"__set__": [...]}``,
``{"__frozenset__": [...]}``. A FrozenDict whose only key looks like a tag goes as ``__map__``, so
a one-entry map with a ``__dunder__`` key is always a tag. The table is in
``docs/snapshot-format.md`` ("Values").

Also the two exceptions the snapshot modules share: `Malformed` (a file's contents are wrong;
becomes a `SnapshotError` on load) and `Unstorable` (a value the format cannot hold; becomes a
`SnapshotError` on save).

>>> import msgpack
>>> raw = msgpack.packb(encode_value((1, [2], {"a": frozenset({3})})))
>>> decode_value(msgpack.unpackb(raw, use_list=False))
(1, [2], {'a': frozenset({3})})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from jointnet.graph.frozen import FrozenDict
from jointnet.graph.layers import Layer
from jointnet.graph.net import Init, TensorRef

__all__ = [
    "Malformed", "Unstorable", "shown", "check_keys", "TAGS", "encode_value", "decode_value", "decode_value_map",
]


class Malformed(Exception):
    """A problem with a file's contents; the snapshot reader turns it into a `SnapshotError`.

    Raised with a message about the value at hand; each enclosing level adds its place with `at`
    on the way out (``net``, ``nodes``, ``['fc1']``, ``params``, ``[0]``, ``shape``), so the happy
    path formats no strings.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def at(self, place: str) -> "Malformed":
        self.path.insert(0, place)
        return self

    def __str__(self) -> str:
        if not self.path:
            return self.message
        place = "".join(p if i == 0 or p.startswith("[") else "." + p for i, p in enumerate(self.path))
        return f"{place}: {self.message}"


class Unstorable(Exception):
    """A value that a snapshot cannot represent; `save` turns it into a `SnapshotError`."""


def shown(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: values quoted from a file stay short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_keys(raw: dict, keys: frozenset, what: str, may_lack: frozenset = frozenset()) -> None:
    """Raise `Malformed` unless the map `raw` has exactly `keys`, less any of `may_lack`."""
    missing = sorted(keys - raw.keys() - may_lack)
    extra = sorted(map(shown, raw.keys() - keys))
    if missing or extra:
        why = [f"lacks {', '.join(missing)}"] if missing else []
        why += [f"has unexpected keys {', '.join(extra)}"] if extra else []
        raise Malformed(f"{what} {' and '.join(why)}")


def _records():
    """The record codec, which stores `Init` and layer-spec values. It imports this module (for
    the annotation fields of records), so it is looked up when first needed, not at import."""
    from jointnet.persistence import codec

    return codec


TAGS = (
    "__list__", "__dict__", "__map__", "__spec__", "__tensorref__", "__init__", "__int__",
    "__set__", "__frozenset__",
)


def _dunder(k: Any) -> bool:
    return type(k) is str and len(k) > 4 and k.startswith("__") and k.endswith("__")


def _enc_map(v: Mapping) -> dict:
    d = v._d if type(v) is FrozenDict else v  # the plain dict inside: no Mapping-ABC overhead
    if not d:
        return {}
    for k in d:
        if type(k) is not str or (len(d) == 1 and _dunder(k)):
            return {"__map__": [[encode_value(k), encode_value(x)] for k, x in d.items()]}
    return {k: encode_value(x) for k, x in d.items()}


def encode_value(v: Any) -> Any:
    """The msgpack-ready form of an annotation or log value (the tag table).

    Raises:
        Unstorable: a value of a type the table does not hold.
    """
    t = type(v)
    if t is str or t is float or t is bool or v is None or t is bytes:
        return v
    if t is int:
        return v if -(1 << 63) <= v < (1 << 64) else {"__int__": str(v)}
    if t is tuple:
        return [encode_value(x) for x in v]
    if t is FrozenDict:
        return _enc_map(v)
    if t is list:
        return {"__list__": [encode_value(x) for x in v]}
    if t is dict:
        return {"__dict__": [[encode_value(k), encode_value(x)] for k, x in v.items()]}
    if t is TensorRef:
        if type(v.key) is not str:
            raise Unstorable(f"TensorRef key must be a str (got {v.key!r})")
        return {"__tensorref__": v.key}
    if t is Init:
        return {"__init__": _records().encode_record(v)}
    if isinstance(v, Layer):
        return {"__spec__": _records().encode_spec(v)}
    if t is set or t is frozenset:
        tag = "__set__" if t is set else "__frozenset__"
        return {tag: [encode_value(x) for x in sorted(v, key=repr)]}
    # Subclasses of plain types (numpy float64, IntEnum, namedtuples) keep their value, not type.
    if isinstance(v, int):
        return encode_value(int(v))
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, tuple):
        return [encode_value(x) for x in v]
    if isinstance(v, Mapping):
        return _enc_map(v)
    if attrs.has(t):  # a record in a field annotated only `FrozenDict` (or in an annotation)
        raise Unstorable(f"cannot store a value of type {t.__name__}: {shown(v)}; a record field that holds "
                         f"{t.__name__}s must say so in its annotation (e.g. FrozenDict[str, {t.__name__}])")
    raise Unstorable(f"cannot store a value of type {t.__name__}: {shown(v)}")


def _array(v: Any, what: str) -> tuple:
    if type(v) is not tuple:
        raise Malformed(f"{what} must be an array (got {type(v).__name__})")
    return v


def _pairs(v: Any, tag: str, rd: Any) -> list[tuple[Any, Any]]:
    out = []
    for pair in _array(v, tag):
        if type(pair) is not tuple or len(pair) != 2:
            raise Malformed(f"{tag} must hold a list of [key, value] pairs")
        out.append((decode_value(pair[0], rd), decode_value(pair[1], rd)))
    return out


def _dec_tag(tag: str, v: Any, rd: Any) -> Any:
    if tag == "__list__":
        return [decode_value(x, rd) for x in _array(v, tag)]
    if tag == "__map__":
        return FrozenDict(_pairs(v, tag, rd))
    if tag == "__dict__":
        return dict(_pairs(v, tag, rd))
    if tag == "__spec__":
        return _records().decode_spec(v, rd)
    if tag == "__tensorref__":
        if type(v) is not str:
            raise Malformed(f"__tensorref__ must hold a string (got {shown(v)})")
        return TensorRef(v)
    if tag == "__init__":
        return _records().decode_record(Init, v, rd)
    if tag == "__int__":
        if type(v) is not str:
            raise Malformed(f"__int__ must hold a string (got {shown(v)})")
        digits = v[1:] if v.startswith("-") else v
        if not (digits.isascii() and digits.isdigit()):
            raise Malformed(f"__int__ holds {shown(v)}, not an integer")
        return int(v)
    if tag == "__set__":
        return {decode_value(x, rd) for x in _array(v, tag)}
    if tag == "__frozenset__":
        return frozenset(decode_value(x, rd) for x in _array(v, tag))
    raise Malformed(f"unknown value tag {shown(tag)}; known tags are {', '.join(TAGS)}")


def decode_value(v: Any, rd: Any = None) -> Any:
    """The inverse of `encode_value` on what msgpack decoded (arrays as tuples).

    `rd` (a `codec.Reading`, or None for a fresh one) is passed on to the records inside
    (``__init__``, ``__spec__``).

    Raises:
        Malformed: an unknown tag, a tag holding the wrong thing, a map with non-string keys.
    """
    t = type(v)
    if t is str or t is int or t is float or t is bool or v is None or t is bytes:
        return v
    if t is tuple:
        return tuple([decode_value(x, rd) for x in v])
    if t is dict:
        if len(v) == 1:
            (k,) = v
            if _dunder(k):
                return _dec_tag(k, v[k], rd)
        for k in v:
            if type(k) is not str:
                raise Malformed(f"map keys must be strings (got {shown(k)})")
        return FrozenDict({k: decode_value(x, rd) for k, x in v.items()})
    raise Malformed(f"unexpected {t.__name__} value {shown(v)}")


_EMPTY = FrozenDict()


def decode_value_map(v: Any, rd: Any = None) -> FrozenDict:
    """`decode_value` of a map that must come back as a `FrozenDict` (annotations, kwargs)."""
    if type(v) is not dict:
        raise Malformed(f"must be a map (got {type(v).__name__})")
    if not v:
        return _EMPTY
    out = decode_value(v, rd)
    if type(out) is not FrozenDict:
        raise Malformed(f"must be a map, not a tagged {type(out).__name__}")
    return out
