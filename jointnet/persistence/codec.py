"""The record codec: the attrs records a net is made of <-> plain maps msgpack reads and writes.

The records are the frozen attrs classes of `jointnet.graph.net` (`Node`, `Param`, `Init`,
`Mask`, `Group`, `TaskInfo`, `NodePolicy`, `Record`), the layer specs, and any attrs class their
fields refer to. A record is stored as the map of its attrs fields (``attrs.fields(cls)``, those
the constructor takes), in field order, each encoded as its type annotation says; a layer spec's
map carries its ``kind`` first. Decoding checks the exact key set and calls the class itself, so
every value passes the validators the rewrites use; a refusal names the field. Nothing here names
a field or a record class: a field or a record class added to the net is stored and checked with
no edit to this module. Annotations and rewrite kwargs (fields typed `FrozenDict`) go through the
tag table of `jointnet.persistence.values`.

How an annotation maps to the file is the table "How a field type is written" of
``docs/snapshot-format.md``: plain values (``str``, ``int``, ``float``, ``bool``, ``None``,
``Literal``, tuples and unions of these) as they are; an attrs class as its record's map;
``Layer`` as a spec's map; a bare ``FrozenDict`` as a value map; ``tuple[X, ...]``,
``X | None``, ``FrozenDict[str, X]`` and ``frozenset[X]`` around those. Any other annotation
makes saving and loading fail with a message naming the field, so a new kind of field is noticed
at once rather than stored wrongly.

>>> from jointnet.graph.net import Group
>>> encode_record(Group("g1", 4, "t2", 3))
{'id': 'g1', 'size': 4, 'owner': 't2', 'created_at': 3}
>>> decode_record(Group, {"id": "g1", "size": 0, "owner": "t2", "created_at": 3})
Traceback (most recent call last):
...
jointnet.persistence.values.Malformed: size: group size must be an int in [1, 16777216]; got 0
"""

from __future__ import annotations

import operator
import types
import typing
from collections.abc import Mapping
from typing import Any, Callable, Literal, Union

import attrs
import msgpack

from jointnet.errors import SpecError
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.layers import SPECS, Layer
from jointnet.persistence.values import (
    Malformed, Unstorable, check_keys, decode_value, decode_value_map, encode_value, shown,
)

__all__ = [
    "Reading", "encode_record", "decode_record", "encode_spec", "decode_spec",
    "construct", "blame", "stored_fields", "field_types", "record_classes",
]

_SCALARS = (str, int, float, bool, type(None))
_UNIONS = (Union, types.UnionType)

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, "Reading"], Any]


class Reading:
    """What the records of one file share while it is read.

    Attributes:
        built: per class, the flat records (specs, inits, groups) built so far, by contents.
        older: the file is of an older format version: a field it lacks takes its class
            default (fields added since have one), instead of being an error.
    """

    __slots__ = ("built", "older")

    def __init__(self, older: bool = False):
        self.built: dict[type, dict] = {}
        self.older = older


def _is_plain(hint: Any) -> bool:
    """Whether values of `hint` are msgpack values as they are (no record or tagged value in)."""
    if hint in _SCALARS:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return all(type(a) in _SCALARS for a in args)
    if origin in _UNIONS or origin is tuple:
        return bool(args) and all(a is Ellipsis or _is_plain(a) for a in args)
    return False


def _conforms(v: Any, hint: Any) -> bool:
    """Whether `v` (after construction) has the plain type `hint`: ints are never bools."""
    if hint in _SCALARS:
        return type(v) is hint or (hint is float and type(v) is int)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return any(type(v) is type(a) and v == a for a in args)
    if origin in _UNIONS:
        return any(_conforms(v, a) for a in args)
    if type(v) is not tuple:
        return False
    if len(args) == 2 and args[1] is Ellipsis:
        return all(_conforms(x, args[0]) for x in v)
    return len(v) == len(args) and all(map(_conforms, v, args))


def _each(raw: Any, dec: Decoder, rd: Reading) -> list:
    """`dec` applied to every element of the array `raw`; errors name the element ``[i]``."""
    if raw == ():
        return []
    if type(raw) is not tuple:
        raise Malformed(f"must be an array (got {type(raw).__name__})")
    out = []
    for i, x in enumerate(raw):
        try:
            out.append(dec(x, rd))
        except Malformed as e:
            raise e.at(f"[{i}]") from None
    return out


def _field_codec(hint: Any, where: str, refs: set) -> tuple[Encoder | None, Decoder | None]:
    """How a field annotated `hint` is encoded and decoded; (None, None) for plain values.

    `refs` collects the record classes the field refers to. Raises TypeError for an annotation
    the format has no encoding for, naming `where`.
    """
    if _is_plain(hint):
        return None, None
    if hint is Any or hint is object or hint is tuple:
        return encode_value, decode_value
    if hint is FrozenDict or hint is Mapping:
        return _encode_value_map, decode_value_map
    if isinstance(hint, type) and issubclass(hint, Layer):
        refs.add(Layer)
        return _encode_spec, _decode_spec
    if isinstance(hint, type) and attrs.has(hint):
        refs.add(hint)
        codec = _codec(hint)  # may be still under construction (a class that refers to itself)
        return codec.encode, codec.decode
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        enc, dec = _field_codec(args[0], where + "[]", refs)
        enc, dec = enc or _same, dec or _same_raw
        return (lambda v: [enc(x) for x in v]), (lambda raw, rd: tuple(_each(raw, dec, rd)))
    if origin is tuple and args:
        parts = [_field_codec(a, where + "[]", refs) for a in args]
        return _fixed_codec(parts, len(args))
    if origin in _UNIONS and len(args) == 2 and type(None) in args:
        enc, dec = _field_codec(next(a for a in args if a is not type(None)), where, refs)
        return (lambda v: None if v is None else enc(v)), (lambda raw, rd: None if raw is None else dec(raw, rd))
    if origin in (FrozenDict, Mapping) and len(args) == 2 and args[0] is str:
        enc, dec = _field_codec(args[1], where + "[]", refs)
        return _map_codec(enc, dec)
    if origin is frozenset and len(args) == 1 and _is_plain(args[0]):
        return _set_codec(args[0])
    raise TypeError(f"snapshots cannot store {where}: no encoding for its type {hint!r} "
                    "(see jointnet.persistence.codec)")


def _encode_value_map(v: Any) -> Any:
    if type(v) is FrozenDict and not v:  # most annotations
        return {}
    return encode_value(v)


def _same(v: Any) -> Any:
    return v


def _same_raw(raw: Any, rd: Reading) -> Any:
    return raw


def _fixed_codec(parts: list, n: int) -> tuple[Encoder, Decoder]:
    encs = [e or _same for e, _ in parts]
    decs = [d or _same_raw for _, d in parts]

    def dec(raw: Any, rd: Reading) -> tuple:
        if type(raw) is not tuple or len(raw) != n:
            raise Malformed(f"must be an array of {n} (got {shown(raw)})")
        out = []
        for i, (d, x) in enumerate(zip(decs, raw, strict=True)):
            try:
                out.append(d(x, rd))
            except Malformed as e:
                raise e.at(f"[{i}]") from None
        return tuple(out)

    return (lambda v: [e(x) for e, x in zip(encs, v, strict=True)]), dec


def _map_codec(enc: Encoder | None, dec: Decoder | None) -> tuple[Encoder, Decoder]:
    enc, dec = enc or _same, dec or _same_raw

    def decode(raw: Any, rd: Reading) -> FrozenDict:
        if type(raw) is not dict:
            raise Malformed(f"must be a map (got {type(raw).__name__})")
        out = {}
        for k, x in raw.items():
            if type(k) is not str:
                raise Malformed(f"map keys must be strings (got {shown(k)})")
            try:
                out[k] = dec(x, rd)
            except Malformed as e:
                raise e.at(f"[{shown(k)}]") from None
        return FrozenDict(out)

    return (lambda v: {k: enc(x) for k, x in v.items()}), decode


def _set_codec(elem: Any) -> tuple[Encoder, Decoder]:
    def encode(v: frozenset) -> list:
        try:
            return sorted(v)
        except TypeError as e:
            raise Unstorable(f"cannot sort the set {shown(v)}: {e}") from None

    def decode(raw: Any, rd: Reading) -> frozenset:
        if type(raw) is not tuple:
            raise Malformed(f"must be an array (got {type(raw).__name__})")
        out = frozenset(raw)
        if len(out) != len(raw):
            raise Malformed(f"a set holds a value twice: {shown(raw)}")
        if not all(_conforms(x, elem) for x in out):
            raise Malformed(f"must be of type {_type_text(frozenset[elem])} (got {shown(raw)})")
        return out

    return encode, decode


class _RecordCodec:
    """How one attrs class is stored: its init fields in order, each with an encoder and decoder
    derived from its annotation (None: stored as is)."""

    def __init__(self, cls: type):
        try:
            hints = typing.get_type_hints(cls)
        except Exception as e:
            raise TypeError(f"snapshots cannot read the field types of {cls.__qualname__}: {e}") from e
        _CODECS[cls] = self  # found, while its fields are being set up, by fields of its own type
        self.cls = cls
        self.kind = cls.kind if issubclass(cls, Layer) else None  # a spec's map starts with its kind
        self.refs: set[type] = set()
        self.fields: list[tuple[str, str, Encoder | None, Decoder | None]] = []
        self.unchecked: list[tuple[str, str, Any]] = []  # plain fields no validator looks at
        for a in attrs.fields(cls):
            if not a.init:
                continue  # derived by the class itself
            hint = hints.get(a.name, Any)
            enc, dec = _field_codec(hint, f"{cls.__qualname__}.{a.alias}", self.refs)
            self.fields.append((a.alias, a.name, enc, dec))
            if dec is None and a.validator is None and a.converter is None:
                self.unchecked.append((a.alias, a.name, hint))
        aliases = [k for k, *_ in self.fields]
        self.keys = frozenset(aliases + (["kind"] if self.kind else []))
        # Fields an older file may lack: those with a default (every field added since has one).
        self.defaulted = frozenset(a.alias for a in attrs.fields(cls) if a.init and a.default is not attrs.NOTHING)
        self.what = ("an " if cls.__name__[0] in "AEIOU" else "a ") + cls.__name__  # for messages
        # The hot paths work on whole tuples and dicts at C speed (thousands of records per file):
        # every value in one attrgetter call, then only the fields with an encoder or decoder.
        get = operator.attrgetter(*(n for _, n, _, _ in self.fields)) if self.fields else (lambda obj: ())
        self.values = get if len(self.fields) != 1 else (lambda obj: (get(obj),))
        self.aliases = tuple(aliases)
        self.encoded = tuple((i, k, enc) for i, (k, _, enc, _) in enumerate(self.fields) if enc is not None)
        self.decoded = tuple((k, dec) for k, _, _, dec in self.fields if dec is not None)
        self.flat = not self.decoded

    def encode(self, obj: Any) -> dict:
        values = self.values(obj)
        if self.kind is None:
            out = dict(zip(self.aliases, values))  # noqa: B905 - one value per alias
        else:
            out = {"kind": self.kind}
            out.update(zip(self.aliases, values))  # noqa: B905
        if self.encoded:
            for i, key, enc in self.encoded:
                try:
                    out[key] = enc(values[i])
                except Unstorable as e:
                    if not getattr(e, "placed", False):  # name the innermost field only
                        e.args, e.placed = (f"{self.cls.__name__}.{key}: {e}",), True
                    raise
        return out

    def decode(self, raw: Any, rd: Reading) -> Any:
        if type(raw) is not dict:
            raise Malformed(f"{self.what} must be a map (got {type(raw).__name__})")
        if raw.keys() != self.keys:
            self._check_keys(raw, rd)  # raises, or lets an older file lack defaulted fields
        seen = None
        if self.flat:
            # Equal flat records (specs, inits, groups) are built once per file, found by their
            # msgpack bytes: True and 1, -0.0 and 0.0 stay apart.
            seen = rd.built.setdefault(self.cls, {})
            key = msgpack.packb(raw)
            hit = seen.get(key)
            if hit is not None:
                return hit
        kwargs = dict(raw)
        if self.kind is not None:
            del kwargs["kind"]
        for k, dec in self.decoded:
            if k in kwargs:  # else an older file without the field: the class default applies
                try:
                    kwargs[k] = dec(kwargs[k], rd)
                except Malformed as e:
                    raise e.at(k) from None
        try:
            obj = self.cls(**kwargs)
        except (SpecError, TypeError, ValueError) as e:
            raise (blame(self.cls, kwargs) or Malformed(_message(e))) from None
        for k, name, hint in self.unchecked:
            v = getattr(obj, name)
            if not _conforms(v, hint):
                raise Malformed(f"{k} must be of type {_type_text(hint)} (got {shown(v)})").at(k)
        if seen is not None:
            seen[key] = obj
        return obj

    def _check_keys(self, raw: dict, rd: Reading) -> None:
        """Raise `Malformed` for a map whose keys are not the fields (an older file may lack
        fields that have defaults). Problems are reported in field order, so a bad value before
        the first missing field is named rather than the missing one."""
        kwargs = {}
        for k, _, _, dec in self.fields:
            if k not in raw:
                break
            try:
                kwargs[k] = raw[k] if dec is None else dec(raw[k], rd)
            except Malformed as e:
                raise e.at(k) from None
        bad = blame(self.cls, kwargs)
        if bad is not None:
            raise bad
        check_keys(raw, self.keys, f"{self.what} map", self.defaulted if rd.older else frozenset())


def construct(cls: type, kwargs: dict) -> Any:
    """``cls(**kwargs)``; a refusal by its validators (the rewrites' own) becomes `Malformed`
    naming the field.

    Raises:
        Malformed: ``<field>: <the validator's message>``.
    """
    try:
        return cls(**kwargs)
    except (SpecError, TypeError, ValueError) as e:
        raise (blame(cls, kwargs) or Malformed(_message(e))) from None


def blame(cls: type, kwargs: dict) -> Malformed | None:
    """The first field (in field order) of `kwargs` whose own converter or validator refuses
    its value, as a `Malformed` naming it; None when each value passes alone (the problem is a
    check across fields, ``__attrs_post_init__``). Tried one field at a time: error path only."""
    for a in attrs.fields(cls):
        if not a.init or a.alias not in kwargs:
            continue
        v, conv = kwargs[a.alias], a.converter
        if isinstance(conv, attrs.Converter):
            if conv.takes_self or conv.takes_field:
                continue  # needs the instance: cannot be tried alone
            conv = conv.converter
        try:
            if conv is not None:
                v = conv(v)
            if a.validator is not None:
                a.validator(None, a, v)
        except (SpecError, TypeError, ValueError) as e:
            return Malformed(_message(e)).at(a.alias)
        except Exception:  # a validator that needs the instance: cannot be tried alone
            continue
    return None


def _message(e: Exception) -> str:
    # attrs' own validators raise with (message, attribute, expected, value) as args.
    return e.args[0] if len(e.args) > 1 and isinstance(e.args[0], str) else str(e)


_CODECS: dict[type, _RecordCodec] = {}


def _codec(cls: type) -> _RecordCodec:
    codec = _CODECS.get(cls)
    if codec is None:
        try:
            codec = _RecordCodec(cls)  # registers itself
        except BaseException:
            _CODECS.pop(cls, None)  # not half a codec: the next use raises the same error
            raise
    return codec


def encode_record(obj: Any) -> dict:
    """The map of an attrs record's fields (a layer spec's with its ``kind`` first).

    Raises:
        Unstorable: a value inside that the format cannot hold.
        TypeError: a field whose annotation has no encoding (names the field).
    """
    return _codec(type(obj)).encode(obj)


def decode_record(cls: type, raw: Any, rd: Reading | None = None) -> Any:
    """The `cls` record that `raw` (from `encode_record`) describes, built by `cls` itself.

    Args:
        cls: the attrs class (a layer spec class too: its map holds its ``kind``).
        raw: the decoded map.
        rd: what one load shares (`Reading`); a fresh one by default.

    Raises:
        Malformed: wrong key set or types, or a value the class's validators refuse; the message
            names the field path (``params[0].shape: ...``).
    """
    return _codec(cls).decode(raw, Reading() if rd is None else rd)


def _encode_spec(spec: Layer) -> dict:
    if SPECS.get(spec.kind) is not type(spec):
        raise Unstorable(f"layer kind {spec.kind!r} ({type(spec).__qualname__}) is not registered; "
                         "call layers.register_spec first")
    return _codec(type(spec)).encode(spec)


def _decode_spec(raw: Any, rd: Reading) -> Layer:
    if type(raw) is not dict:
        raise Malformed(f"a layer spec must be a map (got {type(raw).__name__})")
    kind = raw.get("kind")
    cls = SPECS.get(kind) if type(kind) is str else None
    if cls is None:
        raise Malformed(f"unknown layer kind {shown(kind)}; known kinds are {', '.join(sorted(SPECS))}").at("kind")
    return _codec(cls).decode(raw, rd)


def stored_fields(cls: type) -> tuple[str, ...]:
    """The keys of `cls`'s map in the file, in order (a layer spec's ``kind`` first)."""
    codec = _codec(cls)
    return (("kind",) if codec.kind else ()) + tuple(k for k, *_ in codec.fields)


def field_types(cls: type) -> dict[str, str]:
    """The type of each field of `cls`'s map as ``docs/snapshot-format.md`` writes it
    (``str``, ``int?``, ``array of Param``, ``value map``, ...), in order."""
    hints = typing.get_type_hints(cls)
    out = {"kind": "str"} if issubclass(cls, Layer) else {}
    for key, name, *_ in _codec(cls).fields:
        out[key] = _type_text(hints.get(name, Any))
    return out


def _type_text(hint: Any) -> str:
    if hint in _SCALARS:
        return "nil" if hint is type(None) else hint.__name__
    if hint is FrozenDict or hint is Mapping:
        return "value map"
    if hint is Any or hint is object or hint is tuple:
        return "value"
    if isinstance(hint, type):
        return "spec" if issubclass(hint, Layer) else hint.__name__
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in _UNIONS and len(args) == 2 and type(None) in args:
        return _type_text(next(a for a in args if a is not type(None))) + "?"
    if origin in _UNIONS:
        return " or ".join(map(_type_text, args))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return "array of " + _type_text(args[0])
    if origin is tuple:
        return "[" + ", ".join(map(_type_text, args)) + "]"
    if origin is frozenset:
        return "sorted array of " + _type_text(args[0])
    return "map of " + _type_text(args[1])  # FrozenDict[str, X]: the only other kind _field_codec takes


def record_classes(*roots: type) -> list[type]:
    """Every record class stored under `roots`: the roots and the attrs classes their fields
    refer to, transitively, in first-seen order; a field of type `Layer` brings in every
    registered layer spec."""
    out: list[type] = []
    todo = list(roots)
    while todo:
        cls = todo.pop(0)
        if cls is Layer:
            todo.extend(c for c in SPECS.values() if c not in out and c not in todo)
            continue
        if cls in out:
            continue
        out.append(cls)
        todo.extend(sorted(_codec(cls).refs, key=lambda c: c.__qualname__))
    return out


def encode_spec(spec: Layer) -> dict:
    """A layer spec's map: ``{"kind": ..., <field>: <value>, ...}``."""
    return _encode_spec(spec)


def decode_spec(raw: Any, rd: Reading | None = None) -> Layer:
    """The layer spec `raw` describes; its class comes from ``layers.SPECS`` by ``kind``."""
    return _decode_spec(raw, Reading() if rd is None else rd)
