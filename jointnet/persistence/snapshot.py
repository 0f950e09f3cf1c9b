"""Snapshots: a net, its rewrite log and (optionally) its tensors in one msgpack file.

A snapshot holds everything a `JointNet` is made of (nodes with their specs, parameters, channel
groups, masks and annotations; edges with their routes; tasks; policy; annotations; version,
lineage and the rewrite log) and, when a `ParamStore` is given, every tensor the net references
as raw little-endian bytes with dtype and shape. The layout is documented in
``docs/snapshot-format.md``.

Guarantees:

- **No pickle**: the file is plain msgpack (no ext types) decoded by explicit, validating code, so
  loading an untrusted file can fail with a `SnapshotError` but can never run code.
- **Atomic writes**: `save` writes a temporary file beside the target, fsyncs it and renames it
  over the target, so a reader sees the old snapshot or the new one, never half of one.
- **Integrity**: a CRC-32 over every byte before it ends the file; `load` checks it (and the
  exact file length) before it builds anything.
- **Exactness**: ``load(save(p, net, store)) == (net, store)``: an equal net (version, lineage,
  structure, log) and bit-identical tensors, so compiled outputs are bit-identical too.

>>> from jointnet import backbones
>>> from jointnet.execution.store import ParamStore, referenced_keys
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> store = ParamStore(seed=0).realize(net)
>>> net2, store2 = loads(dumps(net, store))
>>> net2 == net, sorted(store2) == sorted(store)
(True, True)
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import secrets
import sys
import threading
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import msgpack
import networkx as nx
import torch
from torch import nn

from jointnet.errors import InvariantError, SnapshotError, SpecError
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.layers import Layer, spec_from_dict, spec_to_dict
from jointnet.graph.names import check_shape
from jointnet.graph.net import (
    Group,
    Init,
    JointNet,
    Log,
    Mask,
    Node,
    NodePolicy,
    Param,
    Record,
    TaskInfo,
    TensorRef,
)
from jointnet.execution.store import ParamStore, referenced_keys

__all__ = ["save", "load", "dumps", "loads", "FORMAT", "FORMAT_VERSION", "SUPPORTED_VERSIONS"]

FORMAT = "jointnet-snapshot"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# Top-level entries of a version-1 file, in file order.
_ENTRIES = ("format", "format_version", "net", "store", "tensors", "data", "crc32")
_MAGIC = msgpack.packb("format") + msgpack.packb(FORMAT)
_TAIL_KEY = msgpack.packb("crc32")
_TAIL_LEN = len(_TAIL_KEY) + 5  # key, then 0xce + big-endian uint32
_CHUNK = 1 << 16

_DTYPE_NAMES = (
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
)
_DTYPES: dict[str, torch.dtype] = {n: getattr(torch, n) for n in _DTYPE_NAMES if hasattr(torch, n)}
_DTYPE_OF: dict[torch.dtype, str] = {d: n for n, d in _DTYPES.items()}


@contextlib.contextmanager
def _no_gc():
    """Pause the cyclic GC: (de)coding makes many small acyclic objects, and collections
    triggered by them would cost more than the work itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Bad(Exception):
    """A problem with the file's contents; `load` turns it into a `SnapshotError`.

    Decoders raise it with a message about the field at hand; each enclosing level adds its
    place with `at` on the way out, so the happy path formats no strings.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def at(self, place: str) -> "_Bad":
        self.path.insert(0, place)
        return self

    def __str__(self) -> str:
        if not self.path:
            return self.message
        place = "".join(p if i == 0 or p.startswith("[") else "." + p for i, p in enumerate(self.path))
        return f"{place}: {self.message}"


class _Unstorable(Exception):
    """A value that a snapshot cannot represent; `save` turns it into a `SnapshotError`."""


# ---- annotation / log values ------------------------------------------------------------------
#
# Plain msgpack scalars stand for themselves, msgpack arrays for tuples and str-keyed maps for
# FrozenDicts (what `frozen.freeze` makes). Everything else is a one-entry map whose key is a tag:
# {"__list__": [...]}, {"__dict__": [[k, v], ...]}, {"__map__": [[k, v], ...]} (a FrozenDict that
# a plain map cannot carry), {"__spec__": spec_to_dict(spec)}, {"__tensorref__": key},
# {"__init__": {...}}, {"__int__": "digits"} (beyond 64 bits), {"__set__": [...]},
# {"__frozenset__": [...]}. A FrozenDict whose only key looks like a tag goes as "__map__", so a
# one-entry map with a ``__dunder__`` key is always a tag.

_TAGS = (
    "__list__", "__dict__", "__map__", "__spec__", "__tensorref__", "__init__", "__int__",
    "__set__", "__frozenset__",
)


def _dunder(k: Any) -> bool:
    return type(k) is str and len(k) > 4 and k.startswith("__") and k.endswith("__")


def _enc_init(i: Init) -> dict:
    return {"kind": i.kind, "scheme": i.scheme, "fan_in": i.fan_in, "src": i.src, "value": i.value}


def _enc_map(v: Mapping) -> dict:
    d = v._d if type(v) is FrozenDict else v  # the plain dict inside: no Mapping-ABC overhead
    if not d:
        return {}
    for k in d:
        if type(k) is not str or (len(d) == 1 and _dunder(k)):
            return {"__map__": [[_enc(k), _enc(x)] for k, x in d.items()]}
    return {k: _enc(x) for k, x in d.items()}


def _enc(v: Any) -> Any:
    """The msgpack-ready form of an annotation or log value (see the tag table above)."""
    t = type(v)
    if t is str or t is float or t is bool or v is None or t is bytes:
        return v
    if t is int:
        return v if -(1 << 63) <= v < (1 << 64) else {"__int__": str(v)}
    if t is tuple:
        return [_enc(x) for x in v]
    if t is FrozenDict:
        return _enc_map(v)
    if t is list:
        return {"__list__": [_enc(x) for x in v]}
    if t is dict:
        return {"__dict__": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if t is TensorRef:
        if type(v.key) is not str:
            raise _Unstorable(f"TensorRef key must be a str (got {v.key!r})")
        return {"__tensorref__": v.key}
    if t is Init:
        return {"__init__": _enc_init(v)}
    if isinstance(v, Layer):
        return {"__spec__": spec_to_dict(v)}
    if t is set or t is frozenset:
        tag = "__set__" if t is set else "__frozenset__"
        return {tag: [_enc(x) for x in sorted(v, key=repr)]}
    # Subclasses of plain types (numpy float64, IntEnum, namedtuples) keep their value, not type.
    if isinstance(v, int):
        return _enc(int(v))
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, tuple):
        return [_enc(x) for x in v]
    if isinstance(v, Mapping):
        return _enc_map(v)
    raise _Unstorable(f"cannot store a value of type {t.__name__}: {v!r}")


def _dec_pairs(v: Any) -> list[tuple[Any, Any]]:
    if type(v) is not tuple:
        raise _Bad("a tagged map must hold a list of pairs")
    out = []
    for pair in v:
        if type(pair) is not tuple or len(pair) != 2:
            raise _Bad("a tagged map must hold a list of [key, value] pairs")
        out.append((_dec(pair[0]), _dec(pair[1])))
    return out


def _dec_tag(tag: str, v: Any) -> Any:
    if tag == "__list__":
        return [_dec(x) for x in _tuple(v, tag)]
    if tag == "__map__":
        return FrozenDict(_dec_pairs(v))
    if tag == "__dict__":
        return dict(_dec_pairs(v))
    if tag == "__spec__":
        if type(v) is not dict:
            raise _Bad(f"__spec__ must hold a map (got {type(v).__name__})")
        return _dec_spec(v, "__spec__")
    if tag == "__tensorref__":
        return TensorRef(_str(v, tag))
    if tag == "__init__":
        return _dec_init(v)
    if tag == "__int__":
        s = _str(v, tag)
        digits = s[1:] if s.startswith("-") else s
        if not (digits.isascii() and digits.isdigit()):
            raise _Bad(f"__int__ holds {s!r}, not an integer")
        return int(s)
    if tag == "__set__":
        return {_dec(x) for x in _tuple(v, tag)}
    if tag == "__frozenset__":
        return frozenset(_dec(x) for x in _tuple(v, tag))
    raise _Bad(f"unknown value tag {tag!r}; known tags are {', '.join(_TAGS)}")


def _dec(v: Any) -> Any:
    """The inverse of `_enc` on what msgpack decoded (arrays as tuples)."""
    t = type(v)
    if t is str or t is int or t is float or t is bool or v is None or t is bytes:
        return v
    if t is tuple:
        return tuple([_dec(x) for x in v])
    if t is dict:
        if len(v) == 1:
            (k,) = v
            if _dunder(k):
                return _dec_tag(k, v[k])
        for k in v:
            if type(k) is not str:
                raise _Bad(f"map keys must be strings (got {k!r})")
        return FrozenDict({k: _dec(x) for k, x in v.items()})
    raise _Bad(f"unexpected {t.__name__} value {v!r}")


# ---- field readers: each raises _Bad naming the field ----------------------------------------


def _map(v: Any, keys: frozenset, what: str) -> dict:
    if type(v) is not dict:
        raise _Bad(f"{what} must be a map (got {type(v).__name__})")
    if v.keys() != keys:
        missing = sorted(keys - v.keys())
        extra = sorted(map(repr, v.keys() - keys))
        why = [f"lacks {', '.join(missing)}"] if missing else []
        why += [f"has unexpected keys {', '.join(extra)}"] if extra else []
        raise _Bad(f"{what} {' and '.join(why)}")
    return v


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise _Bad(f"{what} must be a string (got {v!r})")
    return v


def _opt_str(v: Any, what: str) -> str | None:
    if v is not None and type(v) is not str:
        raise _Bad(f"{what} must be a string or nil (got {v!r})")
    return v


def _int(v: Any, what: str) -> int:
    if type(v) is not int:
        raise _Bad(f"{what} must be an integer (got {v!r})")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise _Bad(f"{what} must be a boolean (got {v!r})")
    return v


def _num(v: Any, what: str) -> float:
    if type(v) is not float and type(v) is not int:
        raise _Bad(f"{what} must be a number (got {v!r})")
    return v


def _tuple(v: Any, what: str) -> tuple:
    if type(v) is not tuple:
        raise _Bad(f"{what} must be an array (got {type(v).__name__})")
    return v


def _shape(v: Any, what: str, zero: bool = False) -> tuple[int, ...]:
    # Bounded axis by axis before any arithmetic (names.check_shape): a declared shape of 120,000
    # axes of 2**64-1 must cost nothing, not a product of huge integers.
    try:
        return check_shape(_tuple(v, what), what, zero=zero)
    except SpecError as e:
        raise _Bad(str(e)) from None


def _make(cls, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)``, its validators' complaints (the rewrites' own) as `_Bad`."""
    try:
        return cls(*args, **kwargs)
    except (SpecError, TypeError, ValueError) as e:
        raise _Bad(str(e)) from None


def _ann(v: Any, what: str = "annotations") -> Any:
    if type(v) is not dict:
        raise _Bad(f"{what} must be a map (got {type(v).__name__})")
    if not v:
        return FrozenDict()
    try:
        return _dec(v)
    except _Bad as e:
        raise e.at(what) from None


def _each(items: Any, what: str, fn: Callable[[Any], Any]) -> list:
    """`fn` applied to every element of the array `items`; errors name ``what[i]``."""
    if items == ():
        return []
    out = []
    for i, x in enumerate(_tuple(items, what)):
        try:
            out.append(fn(x))
        except _Bad as e:
            raise e.at(f"[{i}]").at(what) from None
    return out


# ---- net <-> plain structure ------------------------------------------------------------------

_INIT_KEYS = frozenset(("kind", "scheme", "fan_in", "src", "value"))
_PARAM_KEYS = frozenset(("name", "key", "shape", "init", "owner", "task", "block", "buffer", "annotations"))
_GROUP_KEYS = frozenset(("id", "size", "owner", "created_at"))
_MASK_KEYS = frozenset(("task", "param", "key", "granularity", "transform", "state", "shape", "init"))
_NODE_KEYS = frozenset((
    "id", "spec", "params", "out_groups", "in_groups", "masks", "annotations", "cloned_from",
    "created_by",
))
_EDGE_KEYS = frozenset(("src", "dst", "port", "tasks"))
_TASK_KEYS = frozenset(("name", "input", "added_at", "head", "annotations"))
_POLICY_KEYS = frozenset(("task", "node", "frozen", "lr_scale", "keep_owned"))
_RECORD_KEYS = frozenset(("name", "kwargs"))
_NET_KEYS = frozenset(("version", "lineage", "nodes", "edges", "tasks", "policy", "annotations", "log"))
_STORE_KEYS = frozenset(("seed",))
_TENSOR_KEYS = frozenset(("key", "dtype", "shape", "parameter", "requires_grad", "nbytes"))


def _enc_param(p: Param) -> dict:
    return {
        "name": p.name, "key": p.key, "shape": p.shape, "init": _enc_init(p.init),
        "owner": p.owner, "task": p.task, "block": p.block, "buffer": p.buffer,
        "annotations": _enc(p.annotations),
    }


def _enc_group(g: Group) -> dict:
    return {"id": g.id, "size": g.size, "owner": g.owner, "created_at": g.created_at}


def _enc_mask(m: Mask) -> dict:
    return {
        "task": m.task, "param": m.param, "key": m.key, "granularity": m.granularity,
        "transform": m.transform, "state": m.state, "shape": m.shape, "init": _enc_init(m.init),
    }


def _enc_node(n: Node) -> dict:
    return {
        "id": n.id,
        "spec": spec_to_dict(n.spec),
        "params": [_enc_param(p) for p in n.params],
        "out_groups": [_enc_group(g) for g in n.out_groups],
        "in_groups": [_enc_group(g) for g in n.in_groups],
        "masks": [_enc_mask(m) for m in n.masks],
        "annotations": _enc(n.annotations),
        "cloned_from": n.cloned_from,
        "created_by": n.created_by,
    }


def _enc_net(net: JointNet) -> dict:
    g = net.graph
    nodes = []
    for node_id, data in g.nodes(data=True):
        n = data["n"]
        if n.id != node_id:
            raise _Unstorable(f"graph node {node_id!r} holds a Node with id {n.id!r}")
        nodes.append(_enc_node(n))
    edges = [
        {"src": u, "dst": v, "port": d["port"], "tasks": sorted(d["tasks"])}
        for u, v, d in g.edges(data=True)
    ]
    tasks = [
        {"name": t.name, "input": t.input, "added_at": t.added_at, "head": t.head,
         "annotations": _enc(t.annotations)}
        for t in net.tasks.values()
    ]
    policy = [
        {"task": task, "node": node, "frozen": p.frozen, "lr_scale": p.lr_scale,
         "keep_owned": p.keep_owned}
        for (task, node), p in net.policy.items()
    ]
    log = [{"name": r.name, "kwargs": _enc(r.kwargs)} for r in net.log]
    return {
        "version": net.version,
        "lineage": net.lineage,
        "nodes": nodes,
        "edges": edges,
        "tasks": tasks,
        "policy": policy,
        "annotations": _enc(net.annotations),
        "log": log,
    }


class _Decoder:
    """Turns the decoded "net" entry into a JointNet; equal specs and inits are built once."""

    def __init__(self) -> None:
        self.specs: dict[tuple, Layer] = {}
        self.inits: dict[tuple, Init] = {}

    def init(self, v: Any) -> Init:
        m = _map(v, _INIT_KEYS, "init")
        key = (
            _str(m["kind"], "init.kind"), _str(m["scheme"], "init.scheme"), _int(m["fan_in"], "init.fan_in"),
            _opt_str(m["src"], "init.src"), _num(m["value"], "init.value"), type(m["value"]),
        )
        out = self.inits.get(key)
        if out is None:
            if key[0] not in ("fresh", "copy", "threshold"):
                raise _Bad(f"init.kind must be fresh, copy or threshold (got {key[0]!r})")
            out = self.inits[key] = _make(Init, key[0], scheme=key[1], fan_in=key[2], src=key[3], value=key[4])
        return out

    def spec(self, v: Any) -> Layer:
        if type(v) is not dict:
            raise _Bad(f"spec must be a map (got {type(v).__name__})")
        # Only flat specs of plain scalars are shared; the type goes in the key so that True
        # and 1 (equal in Python) stay apart.
        key = tuple((k, type(x), x) for k, x in v.items())
        try:
            hit = self.specs.get(key)
        except TypeError:  # an unhashable field value
            return _dec_spec(v, "spec")
        if hit is None:
            hit = self.specs[key] = _dec_spec(v, "spec")
        return hit

    def param(self, v: Any) -> Param:
        m = _map(v, _PARAM_KEYS, "param")
        return _make(Param, 
            _str(m["name"], "name"),
            _str(m["key"], "key"),
            _shape(m["shape"], "shape"),
            self.init(m["init"]),
            owner=_opt_str(m["owner"], "owner"),
            task=_opt_str(m["task"], "task"),
            block=_dec_block(m["block"]),
            buffer=_bool(m["buffer"], "buffer"),
            annotations=_ann(m["annotations"]),
        )

    def mask(self, v: Any) -> Mask:
        m = _map(v, _MASK_KEYS, "mask")
        return _make(Mask, 
            _str(m["task"], "task"),
            _str(m["param"], "param"),
            _str(m["key"], "key"),
            _str(m["granularity"], "granularity"),
            _str(m["transform"], "transform"),
            _str(m["state"], "state"),
            _shape(m["shape"], "shape"),
            self.init(m["init"]),
        )

    def node(self, v: Any) -> Node:
        m = _map(v, _NODE_KEYS, "node")
        node_id = _str(m["id"], "id")
        try:
            return _make(Node, 
                node_id,
                self.spec(m["spec"]),
                params=tuple(_each(m["params"], "params", self.param)),
                out_groups=tuple(_each(m["out_groups"], "out_groups", _dec_group)),
                in_groups=tuple(_each(m["in_groups"], "in_groups", _dec_group)),
                masks=tuple(_each(m["masks"], "masks", self.mask)),
                annotations=_ann(m["annotations"]),
                cloned_from=_opt_str(m["cloned_from"], "cloned_from"),
                created_by=_opt_str(m["created_by"], "created_by"),
            )
        except _Bad as e:
            e.named = True
            raise e.at(f"[{_shown(node_id)}]") from None

    def net(self, v: Any) -> JointNet:
        m = _map(v, _NET_KEYS, "net")
        g = nx.DiGraph()
        for i, raw in enumerate(_tuple(m["nodes"], "nodes")):
            try:
                node = self.node(raw)
            except _Bad as e:  # named by its id when it has one, else by its position
                raise (e if getattr(e, "named", False) else e.at(f"[{i}]")).at("nodes") from None
            if node.id in g:
                raise _Bad(f"node {node.id!r} appears twice")
            g.add_node(node.id, n=node)
        for u, w, tasks, port in _each(m["edges"], "edges", _dec_edge):
            if u not in g or w not in g:
                raise _Bad(f"edge {u!r} -> {w!r} names a node that does not exist")
            if g.has_edge(u, w):
                raise _Bad(f"edge {u!r} -> {w!r} appears twice")
            g.add_edge(u, w, tasks=tasks, port=port)
        tasks: dict[str, TaskInfo] = {}
        for info in _each(m["tasks"], "tasks", _dec_task):
            if info.name in tasks:
                raise _Bad(f"task {info.name!r} appears twice")
            tasks[info.name] = info
        policy: dict[tuple, NodePolicy] = {}
        for key, pol in _each(m["policy"], "policy", _dec_policy):
            if key in policy:
                raise _Bad(f"policy entry {key!r} appears twice")
            policy[key] = pol
        return _make(JointNet, 
            nx.freeze(g),
            tasks=FrozenDict(tasks),
            policy=FrozenDict(policy),
            annotations=_ann(m["annotations"]),
            version=_int(m["version"], "version"),
            log=Log.of(_each(m["log"], "log", _dec_record)),
            lineage=_str(m["lineage"], "lineage"),
        )


def _dec_spec(v: dict, what: str) -> Layer:
    try:
        return spec_from_dict(v)
    except Exception as e:  # SpecError, or whatever a validator raised on a strange value
        raise _Bad(f"{what}: {e}") from e


def _dec_block(v: Any) -> tuple:
    b = _tuple(v, "block")
    if len(b) != 2:
        raise _Bad(f"block must be a pair (got {v!r})")
    _opt_str(b[0], "block")
    _opt_str(b[1], "block")
    return b


def _dec_init(v: Any) -> Init:
    return _Decoder().init(v)


def _dec_group(v: Any) -> Group:
    m = _map(v, _GROUP_KEYS, "group")
    return _make(Group, _str(m["id"], "id"), _int(m["size"], "size"), _str(m["owner"], "owner"),
                 _int(m["created_at"], "created_at"))


def _dec_edge(v: Any) -> tuple[str, str, frozenset, int]:
    e = _map(v, _EDGE_KEYS, "edge")
    tasks = _tuple(e["tasks"], "tasks")
    for t in tasks:
        _str(t, "tasks")
    return _str(e["src"], "src"), _str(e["dst"], "dst"), frozenset(tasks), _int(e["port"], "port")


def _dec_task(v: Any) -> TaskInfo:
    t = _map(v, _TASK_KEYS, "task")
    return _make(TaskInfo, _str(t["name"], "name"), _str(t["input"], "input"), _int(t["added_at"], "added_at"),
                    head=_opt_str(t["head"], "head"), annotations=_ann(t["annotations"]))


def _dec_policy(v: Any) -> tuple[tuple, NodePolicy]:
    p = _map(v, _POLICY_KEYS, "policy entry")
    key = (_opt_str(p["task"], "task"), _str(p["node"], "node"))
    return key, _make(NodePolicy, _bool(p["frozen"], "frozen"), _num(p["lr_scale"], "lr_scale"),
                          _bool(p["keep_owned"], "keep_owned"))


def _dec_record(v: Any) -> Record:
    r = _map(v, _RECORD_KEYS, "record")
    name = _str(r["name"], "name")
    if type(r["kwargs"]) is not dict:
        raise _Bad(f"kwargs must be a map (got {type(r['kwargs']).__name__})")
    kwargs = _ann(r["kwargs"], "kwargs")
    if not isinstance(kwargs, Mapping):
        raise _Bad("kwargs must be a map")
    return _make(Record, name, kwargs)


def _dec_net(v: Any) -> JointNet:
    try:
        return _Decoder().net(v)
    except _Bad as e:
        raise e.at("net") from None


# ---- tensors ----------------------------------------------------------------------------------


def _raw_view(t: torch.Tensor, nbytes: int) -> memoryview:
    """The bytes of the contiguous CPU tensor `t` as a (writable) memoryview, without a copy.

    The view does not keep `t` alive: the caller must.
    """
    if nbytes == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_ubyte * nbytes).from_address(t.data_ptr())).cast("B")


def _tensor_plan(net: JointNet, store: ParamStore) -> tuple[list[dict], list[torch.Tensor]]:
    """The tensor index entries and the contiguous CPU tensors whose bytes follow, in order."""
    index: list[dict] = []
    keep: list[torch.Tensor] = []
    for key in sorted(k for k in store.keys_of(net) if k in store.tensors):
        t = store.tensors[key]
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            raise _Unstorable(f"tensor {key!r} is not a dense (strided) tensor")
        name = _DTYPE_OF.get(t.dtype)
        if name is None:
            raise _Unstorable(
                f"tensor {key!r} has dtype {t.dtype}, which snapshots do not store; "
                f"supported dtypes are {', '.join(_DTYPES)}"
            )
        data = t.detach()
        if data.device.type != "cpu":
            data = data.cpu()
        data = data.resolve_conj().resolve_neg().contiguous()
        nbytes = data.numel() * data.element_size()
        if nbytes >= 1 << 32:
            raise _Unstorable(f"tensor {key!r} takes {nbytes} bytes; a snapshot stores at most 4 GiB per tensor")
        index.append({
            "key": key, "dtype": name, "shape": list(data.shape),
            "parameter": isinstance(t, nn.Parameter), "requires_grad": bool(t.requires_grad),
            "nbytes": nbytes,
        })
        keep.append(data)
    return index, keep


# ---- writing ----------------------------------------------------------------------------------


def _head(net: JointNet, store: ParamStore | None, tensors: bool) -> tuple[bytes, list[torch.Tensor]]:
    """Every byte of the file before the first tensor's bin header, and the tensors to follow."""
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for
        raise _Unstorable("snapshots store little-endian tensors; this machine is big-endian")
    if store is not None and tensors:
        index, keep = _tensor_plan(net, store)
        store_obj = {"seed": store.seed}
    else:
        index, keep, store_obj = [], [], None
    pk = msgpack.Packer(use_bin_type=True, autoreset=False)
    pk.pack_map_header(len(_ENTRIES))
    for key, value in (
        ("format", FORMAT), ("format_version", FORMAT_VERSION), ("net", _enc_net(net)),
        ("store", store_obj), ("tensors", index),
    ):
        pk.pack(key)
        pk.pack(value)
    pk.pack("data")
    pk.pack_array_header(len(keep))
    return pk.bytes(), keep


class _Crc:
    """A running CRC-32 over the chunks fed to it, in order."""

    def __init__(self) -> None:
        self.crc = 0

    def feed(self, chunk: Any) -> None:
        self.crc = zlib.crc32(chunk, self.crc)

    def value(self) -> int:
        return self.crc


# CRC-32 of a concatenation from the CRCs of its parts (zlib's crc32_combine): appending n
# bytes to a message maps its CRC through a linear operator over GF(2), the n-th power of the
# one-byte operator; _OPS[k] is the operator for 2**k bytes, as 32 column vectors.
_OPS: list[list[int]] = []


def _gf2_times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def _crc_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``a + b`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)``."""
    k = 0
    while len2:
        while k >= len(_OPS):
            if not _OPS:
                one_bit = [0xEDB88320] + [1 << (n - 1) for n in range(1, 32)]
                _OPS.append(_gf2_square(_gf2_square(_gf2_square(one_bit))))  # 8 bits: one byte
            else:
                _OPS.append(_gf2_square(_OPS[-1]))
        if len2 & 1:
            crc1 = _gf2_times(_OPS[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


class _ParallelCrc(_Crc):
    """The same CRC-32, its large chunks checksummed by helper threads while the caller does I/O.

    Chunks are cut into pieces that helper threads checksum as soon as they are fed (zlib
    releases the GIL), so checksumming overlaps the reads or writes; `value` has the caller help
    with what is left, then combines the pieces' CRCs in order. Chunks must stay alive and
    unchanged until `value` returns.
    """

    def __init__(self, helpers: int) -> None:
        super().__init__()
        self._sizes: list[int] = []  # per piece, in file order
        self._crcs: list[int | None] = []  # filled in by whoever checksums the piece
        self._todo: list[tuple[int, memoryview]] = []
        self._taken = 0
        self._closed = False
        self._cv = threading.Condition()
        self._threads = [threading.Thread(target=self._work, daemon=True, name="jointnet-crc")
                         for _ in range(helpers)]
        for t in self._threads:
            t.start()

    def feed(self, chunk: Any) -> None:
        view = memoryview(chunk).cast("B")
        if view.nbytes < _PIECE // 16:  # headers: not worth a hand-off
            self._sizes.append(view.nbytes)
            self._crcs.append(zlib.crc32(view))
            return
        with self._cv:
            for start in range(0, view.nbytes, _PIECE):
                piece = view[start : start + _PIECE]
                self._todo.append((len(self._sizes), piece))
                self._sizes.append(piece.nbytes)
                self._crcs.append(None)
            self._cv.notify_all()

    def _take(self, wait: bool) -> tuple[int, memoryview] | None:
        with self._cv:
            while self._taken == len(self._todo):
                if self._closed or not wait:
                    return None
                self._cv.wait()
            item = self._todo[self._taken]
            self._taken += 1
            return item

    def _work(self, wait: bool = True) -> None:
        while (item := self._take(wait)) is not None:
            i, piece = item
            self._crcs[i] = zlib.crc32(piece)

    def value(self) -> int:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._work(wait=False)  # help with the pieces no helper has taken yet
        for t in self._threads:
            t.join()
        crc = 0
        for part, n in zip(self._crcs, self._sizes):
            crc = _crc_combine(crc, part, n)
        return crc


def _helpers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(3, cpus - 1))


_PARALLEL_MIN = 8 << 20  # below this, helper threads cost more than they save
_PIECE = 4 << 20  # the unit of parallel checksumming (and of reading tensors)


def _crc_for(nbytes: int) -> _Crc:
    return _ParallelCrc(_helpers()) if nbytes >= _PARALLEL_MIN else _Crc()


def _emit(write: Callable[[Any], None], head: bytes, keep: list[torch.Tensor]) -> None:
    """Write the file: `head`, each tensor as a bin 32 object, then the crc32 entry."""
    chunks: list[Any] = [head]
    total = 0
    for t in keep:
        nbytes = t.numel() * t.element_size()
        chunks.append(b"\xc6" + nbytes.to_bytes(4, "big"))
        chunks.append(_raw_view(t, nbytes))
        total += nbytes
    crc = _crc_for(total)
    try:
        for chunk in chunks:
            crc.feed(chunk)
            write(chunk)
    finally:
        value = crc.value()  # joins the helper thread even when a write failed
    write(_TAIL_KEY + b"\xce" + value.to_bytes(4, "big"))


def _encode(net: JointNet, store: ParamStore | None, tensors: bool, name: str):
    if not isinstance(net, JointNet):
        raise SnapshotError(f"cannot write snapshot {name}: expected a JointNet, got {type(net).__name__}")
    if store is not None and not isinstance(store, ParamStore):
        raise SnapshotError(f"cannot write snapshot {name}: store must be a ParamStore, got {type(store).__name__}")
    try:
        with _no_gc():
            return _head(net, store, tensors)
    except _Unstorable as e:
        raise SnapshotError(f"cannot write snapshot {name}: {e}") from None
    except Exception as e:  # msgpack refusing a value, a spec that cannot be turned into a dict
        raise SnapshotError(f"cannot write snapshot {name}: {type(e).__name__}: {e}") from e


def dumps(net: JointNet, store: ParamStore | None = None, *, tensors: bool = True) -> bytes:
    """The snapshot of `net` (and the tensors it references in `store`) as bytes.

    Raises:
        SnapshotError: a value the format cannot hold (see `save`).
    """
    head, keep = _encode(net, store, tensors, "<bytes>")
    parts: list[Any] = []
    _emit(parts.append, head, keep)
    return b"".join(parts)


_sync_file_range: Any = None


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing `nbytes` at `offset` to disk now, without waiting.

    The final fsync then finds most of the file on disk already (Linux ``sync_file_range``
    with SYNC_FILE_RANGE_WRITE); a no-op elsewhere.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _sync_file_range = fn
            except (OSError, AttributeError):  # pragma: no cover - no libc symbol
                pass
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; failures are harmless


class _FileWriter:
    """Writes everything it is given to `fd`, starting writeback every few MiB."""

    _EVERY = 4 << 20

    def __init__(self, fd: int):
        self.fd = fd
        self.pos = 0
        self.synced = 0

    def __call__(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = os.write(self.fd, view[: min(view.nbytes, self._EVERY)])
            view = view[n:]
            self.pos += n
            if self.pos - self.synced >= self._EVERY:
                _start_writeback(self.fd, self.synced, self.pos - self.synced)
                self.synced = self.pos


def save(path: str | os.PathLike, net: JointNet, store: ParamStore | None = None, *, tensors: bool = True) -> Path:
    """Write a snapshot of `net` to `path` atomically; returns the path.

    With a `store` (and ``tensors=True``) every tensor of the store that `net` references
    (``store.keys_of(net)``: parameters, masks, `TensorRef` annotations) goes in as raw bytes;
    tensors the store does not hold yet are left out (``store.realize(net)`` makes them later).
    The file is written beside `path` under a temporary name, fsynced and renamed over `path`.

    Args:
        path: the file to write (replaced if it exists).
        net: the net.
        store: the tensors, or None for a structure-only snapshot.
        tensors: False to leave the tensors out even when `store` is given.

    Returns:
        `path` as a `Path`.

    Raises:
        SnapshotError: a value the format cannot hold (an annotation of an unknown type, a
            tensor of an unsupported dtype or layout); the file at `path` is left untouched.
        OSError: the file could not be written; the file at `path` is left untouched.

    >>> import tempfile, pathlib
    >>> from jointnet import backbones
    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> p = save(pathlib.Path(tempfile.mkdtemp()) / "net.jns", net)
    >>> load(p) == (net, None)
    True
    """
    path = Path(os.fspath(path))
    head, keep = _encode(net, store, tensors, str(path))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            _emit(_FileWriter(fd), head, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); best effort where directories cannot be opened."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - file systems without directory fsync
        pass
    finally:
        os.close(dfd)


# ---- reading ----------------------------------------------------------------------------------


class _Source:
    """A binary stream of known size, read sequentially under a running CRC-32."""

    def __init__(self, f, size: int):
        self.f = f
        self.size = size
        self.pos = 0
        self.crc: _Crc = _Crc()

    def seek(self, pos: int) -> None:
        self.f.seek(pos)
        self.pos = pos

    def take(self, n: int, crc: bool = True) -> bytes:
        out = self.f.read(n) if n else b""
        if len(out) != n:
            raise _Bad(f"the file ends early at byte {self.pos + len(out)} (truncated)")
        self.pos += n
        if crc:
            self.crc.feed(out)
        return out

    def take_into(self, view: memoryview) -> None:
        for start in range(0, view.nbytes, _PIECE):
            piece = view[start : start + _PIECE]
            rest = piece
            while rest.nbytes:
                n = self.f.readinto(rest)
                if not n:
                    raise _Bad("the file ends early (truncated)")
                rest = rest[n:]
            self.pos += piece.nbytes
            self.crc.feed(piece)

    def count(self, kinds: dict[int, int], fix: tuple[int, int] | None, what: str) -> int:
        """Read a msgpack array or bin header: the element or byte count it gives."""
        m = self.take(1)[0]
        if fix is not None and fix[0] <= m <= fix[1]:
            return m - fix[0]
        width = kinds.get(m)
        if width is None:
            raise _Bad(f"expected {what} at byte {self.pos - 1}, found type byte 0x{m:02x}")
        return int.from_bytes(self.take(width), "big")


_ARRAY = ({0xDC: 2, 0xDD: 4}, (0x90, 0x9F))
_BIN = ({0xC4: 1, 0xC5: 2, 0xC6: 4}, None)


def _expect(up: msgpack.Unpacker, key: str) -> None:
    got = up.unpack()
    if got != key:
        raise _Bad(f"expected entry {key!r}, found {got!r}")


def _check_magic(start: bytes) -> None:
    """Check that `start` (the file's first bytes) opens a map whose first entry is the tag.

    Done byte for byte before any msgpack decoding, so a file of another kind is turned away
    without being parsed.
    """
    first = start[0] if start else None
    width = 0 if first is not None and 0x80 <= first <= 0x8F else {0xDE: 2, 0xDF: 4}.get(first)
    if width is not None:
        got = start[1 + width : 1 + width + len(_MAGIC)]
        if got == _MAGIC:
            return
        if len(start) < 1 + width + len(_MAGIC) and _MAGIC.startswith(got):
            raise _Bad(f"the file ends early at byte {len(start)} (truncated)")
    raise _Bad(f"not a jointnet snapshot (it does not start with a map whose first entry is "
               f"'format': {FORMAT!r}; its first bytes are {bytes(start[:12])!r})")


def _read_raw(src: _Source) -> tuple[Any, Any, dict[str, tuple]]:
    """Parse and verify the file: (net structure, store entry, tensors by key).

    Only msgpack decoding and raw tensor reads happen before the checksum is verified; the
    net is built afterwards, so a corrupted file fails here with a corruption message.
    """
    size = src.size
    if size == 0:
        raise _Bad("the file is empty")
    limit = max(min(size, (1 << 31) - 1), 1)
    up = msgpack.Unpacker(
        src.f, read_size=min(_CHUNK, limit), use_list=False, raw=False, strict_map_key=True,
        max_buffer_size=limit, max_array_len=limit, max_map_len=limit, max_str_len=limit,
        max_bin_len=limit, max_ext_len=0,
    )
    _check_magic(src.take(min(size, 5 + len(_MAGIC)), crc=False))
    src.seek(0)
    n_entries = up.read_map_header()
    up.skip()  # "format"
    up.skip()  # FORMAT, both checked by _check_magic
    _expect(up, "format_version")
    version = up.unpack()
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        supported = ", ".join(map(str, SUPPORTED_VERSIONS))
        raise _Bad(f"unsupported snapshot format version {version!r}; this jointnet reads format version(s) {supported}")
    if n_entries != len(_ENTRIES):
        raise _Bad(f"a version-1 snapshot is a map of {len(_ENTRIES)} entries, not {n_entries}")
    _expect(up, "net")
    net_obj = up.unpack()
    _expect(up, "store")
    store_obj = up.unpack()
    _expect(up, "tensors")
    plan = _check_index(up.unpack(), store_obj, size)
    _expect(up, "data")
    # From here on read by hand: tensor bytes go straight from the file into the tensors.
    head_len = up.tell()
    del up
    src.crc = _crc_for(sum(p[3] for p in plan))
    try:
        src.seek(0)
        src.take(head_len)
        tensors = _read_tensors(src, plan)
    finally:
        crc = src.crc.value()  # joins the helper thread, also when reading failed
    if src.pos + _TAIL_LEN != size:
        raise _Bad(f"the file is {size} bytes but its entries end at byte {src.pos + _TAIL_LEN} (truncated, "
                   "corrupted or with trailing data)")
    tail = src.take(_TAIL_LEN, crc=False)
    if tail[:-4] != _TAIL_KEY + b"\xce":
        raise _Bad("the file does not end in its crc32 entry (truncated or corrupted)")
    if int.from_bytes(tail[-4:], "big") != crc:
        raise _Bad("checksum mismatch: the file is corrupted")
    return net_obj, store_obj, tensors


def _read_tensors(src: _Source, plan: list[tuple]) -> dict[str, tuple]:
    tensors: dict[str, tuple] = {}
    if src.count(*_ARRAY, "the data array") != len(plan):
        raise _Bad(f"the data array does not hold the {len(plan)} tensors of the index")
    for key, dtype, shape, nbytes, param, grad in plan:
        if src.count(*_BIN, f"the bytes of tensor {key!r}") != nbytes:
            raise _Bad(f"the bytes of tensor {key!r} are not the {nbytes} its index entry says")
        if src.pos + nbytes + _TAIL_LEN > src.size:
            raise _Bad(f"the file ends inside tensor {key!r} (truncated)")
        t = torch.empty(shape, dtype=dtype)
        src.take_into(_raw_view(t, nbytes))
        tensors[key] = (t, param, grad)
    return tensors


def _check_index(index: Any, store_obj: Any, size: int) -> list[tuple]:
    """Validate the store entry and the tensor index against the file's `size`; the plan of
    tensors to read."""
    if store_obj is not None:
        m = _map(store_obj, _STORE_KEYS, "store")
        _int(m["seed"], "store.seed")
    plan = []
    seen = set()
    for i, raw in enumerate(_tuple(index, "tensors")):
        where = f"tensors[{i}]"
        e = _map(raw, _TENSOR_KEYS, where)
        key = _str(e["key"], where + ".key")
        if key in seen:
            raise _Bad(f"tensor {key!r} appears twice")
        seen.add(key)
        dtype = _DTYPES.get(_str(e["dtype"], where + ".dtype"))
        if dtype is None:
            raise _Bad(f"tensor {key!r} has unknown dtype {e['dtype']!r}; known are {', '.join(_DTYPES)}")
        shape = _shape(e["shape"], where + ".shape", zero=True)
        nbytes = _int(e["nbytes"], where + ".nbytes")
        if nbytes != math.prod(shape) * dtype.itemsize:
            raise _Bad(f"tensor {key!r} has {nbytes} bytes, but shape {list(shape)} of {e['dtype']} needs "
                       f"{math.prod(shape) * dtype.itemsize}")
        param = _bool(e["parameter"], where + ".parameter")
        grad = _bool(e["requires_grad"], where + ".requires_grad")
        if grad and not (dtype.is_floating_point or dtype.is_complex):
            raise _Bad(f"tensor {key!r} of dtype {e['dtype']} cannot require grad")
        plan.append((key, dtype, shape, nbytes, param, grad))
    if plan and store_obj is None:
        raise _Bad("the file has tensors but no store entry")
    total = sum(p[3] for p in plan)
    if total > size:
        raise _Bad(f"the tensor index declares {total} bytes of tensors, more than the file's {size} bytes")
    return plan


def _build(raw, device) -> tuple[JointNet, ParamStore | None]:
    net_obj, store_obj, tensors = raw
    net = _dec_net(net_obj)
    _run_check(net)
    _check_tensors(net, tensors)
    if store_obj is None:
        return net, None
    store = ParamStore(seed=store_obj["seed"], device=device)
    dev = torch.device(device)
    for key, (t, param, grad) in tensors.items():
        if dev.type != "cpu":
            t = t.to(dev)
        if param:
            t = nn.Parameter(t, requires_grad=grad)
        elif grad:
            t.requires_grad_(True)
        store.tensors[key] = t
    return net, store


def _check_tensors(net: JointNet, tensors: dict[str, tuple]) -> None:
    """Every tensor of the file against what the net says of it: a parameter or mask tensor has
    the shape of its `Param` / `Mask` and a floating dtype; any other tensor must be referenced
    by a `TensorRef` of the net (strategy data, any dtype)."""
    if not tensors:
        return
    owners: dict[str, tuple[str, tuple[int, ...]]] = {}
    for n in net.nodes:
        node = net.node(n)
        for p in node.params:
            owners[p.key] = (f"parameter {p.name!r} {p.block} of node {n!r}", p.shape)
        for m in node.masks:
            owners[m.key] = (f"mask of task {m.task!r} on {n!r}.{m.param}", m.shape)
    refs = referenced_keys(net)
    for key, (t, _param, _grad) in tensors.items():
        if key in owners:
            what, shape = owners[key]
            if tuple(t.shape) != shape:
                raise _Bad(f"tensor {key!r} ({what}) has shape {list(t.shape)}, the net says {list(shape)}")
            if not t.dtype.is_floating_point:
                raise _Bad(f"tensor {key!r} ({what}) has dtype {_DTYPE_OF[t.dtype]}; parameters and masks "
                           "must be floating point")
        elif key not in refs:
            raise _Bad(f"tensor {key!r} is not referenced by the net (no parameter, mask or TensorRef has it)")


def _run_check(net: JointNet) -> None:
    try:
        from jointnet.graph.check import check
    except ModuleNotFoundError as e:
        if e.name in ("jointnet.graph.check",):
            return
        raise
    try:
        check(net)
    except InvariantError as e:
        raise _Bad(f"the net breaks an invariant: {e}") from e


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_from(src: _Source, name: str, device) -> tuple[JointNet, ParamStore | None]:
    try:
        with _no_gc():
            return _build(_read_raw(src), device)
    except _Bad as e:
        msg = str(e)  # names the field; capped, since it may quote a hostile value
        raise SnapshotError(f"cannot load snapshot {name}: {msg if len(msg) <= 400 else msg[:397] + '...'}") from None
    except msgpack.OutOfData:
        raise SnapshotError(f"cannot load snapshot {name}: the file ends early (truncated)") from None
    except (msgpack.FormatError, msgpack.StackError, msgpack.ExtraData, UnicodeDecodeError) as e:
        raise SnapshotError(f"cannot load snapshot {name}: malformed msgpack ({type(e).__name__}: {e})") from e
    except SnapshotError as e:
        raise SnapshotError(f"cannot load snapshot {name}: {e}") from e
    except Exception as e:  # anything a corrupted file can provoke: msgpack, attrs, torch errors
        raise SnapshotError(f"cannot load snapshot {name}: {type(e).__name__}: {e}") from e


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[JointNet, ParamStore | None]:
    """Read a snapshot written by `save`: the net, and a store with its tensors (or None).

    The net equals the saved one (version, lineage, structure and log); the tensors are
    bit-identical, Parameters stay ``nn.Parameter``. Loading decodes plain msgpack only: it never
    runs code from the file.

    Args:
        path: the snapshot file.
        device: where the tensors go.

    Returns:
        ``(net, store)``; store is None for a structure-only snapshot.

    Raises:
        SnapshotError: for any problem with the file (missing, empty, not msgpack, truncated,
            corrupted, wrong format tag, unsupported format version, invalid contents), naming it.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise SnapshotError(f"cannot load snapshot {path!r}: expected a path, got {type(path).__name__}")
    name = os.fspath(path)
    try:
        f = open(path, "rb", buffering=0)
    except Exception as e:
        raise SnapshotError(f"cannot load snapshot {name}: {type(e).__name__}: {e}") from e
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
        except Exception as e:  # pragma: no cover
            raise SnapshotError(f"cannot load snapshot {name}: {e}") from e
        return _load_from(_Source(f, size), name, device)


def loads(data: bytes | bytearray | memoryview, *, device: str | torch.device = "cpu") -> tuple[JointNet, ParamStore | None]:
    """`load` from bytes (as made by `dumps`)."""
    import io

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"cannot load snapshot <bytes>: expected bytes, got {type(data).__name__}")
    return _load_from(_Source(io.BytesIO(data), memoryview(data).nbytes), "<bytes>", device)
