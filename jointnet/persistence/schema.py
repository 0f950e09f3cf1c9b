"""The ``"net"`` entry of a snapshot: the explicit top-level schema of a `JointNet`.

A JointNet is not stored field by field: its graph becomes two arrays (nodes, edges) and its
policy a list of entries. So its top level is a small explicit table, `NET`, one line per entry
in file order: the key, how the entry is made from the net, and how it is read back. Apart from
``nodes`` and ``edges`` (which make the graph) the key is the `JointNet` argument the decoded
value goes to, so a new JointNet field needs one line here. Everything inside (nodes, tasks,
policies, log records, specs) is a record of `jointnet.persistence.codec`, stored from its attrs
fields.

>>> from jointnet import backbones
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> import msgpack
>>> raw = msgpack.packb(encode_net(net))
>>> list(msgpack.unpackb(raw)) == list(ENTRIES)
True
>>> decode_net(msgpack.unpackb(raw, use_list=False)) == net
True
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
import networkx as nx

from jointnet.errors import SpecError
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.names import MAX_DIM, check_name, check_opt_name, is_name
from jointnet.graph.net import Init, JointNet, Log, Node, NodePolicy, Record, TaskInfo
from jointnet.persistence.codec import Reading, construct, decode_record, encode_record
from jointnet.persistence.values import Malformed, Unstorable, check_keys, decode_value_map, encode_value, shown

__all__ = ["NET", "ENTRIES", "EDGE_KEYS", "POLICY_KEYS", "UNSTORED", "RECORDS", "encode_net", "decode_net"]


def _checked(check: Callable[..., Any], value: Any, what: str, *args: Any) -> Any:
    """``check(value, what, *args)`` (a `jointnet.graph.names` check), its complaint `Malformed`."""
    try:
        return check(value, what, *args)
    except SpecError as e:
        raise Malformed(str(e)) from None  # its message starts with `what`


def _array(raw: Any) -> tuple:
    if type(raw) is not tuple:
        raise Malformed(f"must be an array (got {type(raw).__name__})")
    return raw


def _records(raw: Any, cls: type, label: str | None, rd: Reading) -> list:
    """The `cls` records of the array `raw`; errors name an element by its `label` field (a node
    by its id, a task by its name) when that is a valid name, else by its position."""
    out = []
    for i, x in enumerate(_array(raw)):
        try:
            out.append(decode_record(cls, x, rd))
        except Malformed as e:
            name = x.get(label) if label is not None and type(x) is dict else None
            raise e.at(f"[{name!r}]" if is_name(name) else f"[{i}]") from None
    return out


def _enc_nodes(net: JointNet) -> list[dict]:
    out = []
    for node_id, data in net.graph.nodes(data=True):
        n = data["n"]
        if n.id != node_id:
            raise Unstorable(f"graph node {node_id!r} holds a Node with id {n.id!r}")
        out.append(encode_record(n))
    return out


def _dec_nodes(raw: Any, rd: Reading) -> nx.DiGraph:
    g = nx.DiGraph()
    for node in _records(raw, Node, "id", rd):
        if node.id in g:
            raise Malformed(f"node {node.id!r} appears twice")
        g.add_node(node.id, n=node)
    return g


EDGE_KEYS = ("src", "dst", "port", "tasks")
_EDGE_KEYSET = frozenset(EDGE_KEYS)


def _enc_edges(net: JointNet) -> list[dict]:
    return [{"src": u, "dst": v, "port": d["port"], "tasks": sorted(d["tasks"])}
            for u, v, d in net.graph.edges(data=True)]


def _dec_edges(raw: Any, rd: Reading) -> list[tuple[str, str, dict]]:
    # Only types here: that src and dst are nodes of the graph is checked when the edges are
    # added, that the tasks are registered by `check` (after the net is built).
    out = []
    for i, e in enumerate(_array(raw)):
        try:
            if type(e) is not dict:
                raise Malformed(f"an edge must be a map (got {type(e).__name__})")
            if e.keys() != _EDGE_KEYSET:
                check_keys(e, _EDGE_KEYSET, "an edge")
            src, dst, port, tasks = e["src"], e["dst"], e["port"], e["tasks"]
            if type(src) is not str or type(dst) is not str:
                raise Malformed(f"src and dst must be strings (got {shown(src)}, {shown(dst)})")
            if type(port) is not int or not 0 <= port <= MAX_DIM:
                raise Malformed(f"port must be an int in [0, {MAX_DIM}]; got {shown(port)}")
            if type(tasks) is not tuple or not all(type(t) is str for t in tasks):
                raise Malformed(f"tasks must be an array of strings (got {shown(tasks)})")
            if len(set(tasks)) != len(tasks):
                raise Malformed(f"tasks names a task twice: {shown(tasks)}")
            out.append((src, dst, {"tasks": frozenset(tasks), "port": port}))
        except Malformed as err:
            raise err.at(f"[{i}]") from None
    return out


def _dec_tasks(raw: Any, rd: Reading) -> FrozenDict:
    tasks: dict[str, TaskInfo] = {}
    for info in _records(raw, TaskInfo, "name", rd):
        if info.name in tasks:
            raise Malformed(f"task {info.name!r} appears twice")
        tasks[info.name] = info
    return FrozenDict(tasks)


POLICY_KEYS = ("task", "node")  # then the fields of the NodePolicy


def _enc_policy(net: JointNet) -> list[dict]:
    return [{"task": task, "node": node, **encode_record(p)} for (task, node), p in net.policy.items()]


def _dec_policy(raw: Any, rd: Reading) -> FrozenDict:
    policy: dict[tuple, NodePolicy] = {}
    for i, e in enumerate(_array(raw)):
        try:
            if type(e) is not dict or not all(k in e for k in POLICY_KEYS):
                raise Malformed(f"a policy entry must be a map with task and node (got {shown(e)})")
            key = (_checked(check_opt_name, e["task"], "task"), _checked(check_name, e["node"], "node"))
            p = decode_record(NodePolicy, {k: v for k, v in e.items() if k not in POLICY_KEYS}, rd)
        except Malformed as err:
            raise err.at(f"[{i}]") from None
        if key in policy:
            raise Malformed(f"policy entry {key!r} appears twice")
        policy[key] = p
    return FrozenDict(policy)


def _as_is(raw: Any, rd: Reading) -> Any:
    return raw  # checked by JointNet's own validators


# The "net" entry, in file order: key, encode(net), decode(raw, reading).
NET: tuple[tuple[str, Callable[[JointNet], Any], Callable[[Any, Reading], Any]], ...] = (
    ("version", lambda net: net.version, _as_is),
    ("lineage", lambda net: net.lineage, _as_is),
    ("nodes", _enc_nodes, _dec_nodes),
    ("edges", _enc_edges, _dec_edges),
    ("tasks", lambda net: [encode_record(t) for t in net.tasks.values()], _dec_tasks),
    ("policy", _enc_policy, _dec_policy),
    ("annotations", lambda net: encode_value(net.annotations), decode_value_map),
    ("log", lambda net: [encode_record(r) for r in net.log], lambda raw, rd: Log.of(_records(raw, Record, None, rd))),
)
ENTRIES = tuple(key for key, _, _ in NET)
# The record classes the entries hold (with every record class their fields refer to, these are
# all the records of a file; `Init` is also a value tag).
RECORDS = (Node, TaskInfo, NodePolicy, Record, Init)
# JointNet fields that are not entries: the graph is "nodes" and "edges"; the rest is per process.
UNSTORED = ("graph", "uid", "cache")
# Entries an older file may lack: those whose JointNet field has a default (added since).
_MAY_LACK = frozenset(a.alias for a in attrs.fields(JointNet) if a.default is not attrs.NOTHING) & set(ENTRIES)


def encode_net(net: JointNet) -> dict:
    """The ``"net"`` entry of `net`: a map of the `NET` entries, in order.

    Raises:
        Unstorable: a value inside that the format cannot hold.
    """
    return {key: enc(net) for key, enc, _ in NET}


def decode_net(raw: Any, older: bool = False) -> JointNet:
    """The JointNet of a decoded ``"net"`` entry (not yet checked by `check`).

    Args:
        raw: the entry as msgpack decoded it (arrays as tuples).
        older: the file is of an older format version (see `codec.Reading`).

    Raises:
        Malformed: anything wrong, the message naming the place (``net.nodes['fc1'].spec...``).
    """
    try:
        if type(raw) is not dict:
            raise Malformed(f"must be a map (got {type(raw).__name__})")
        check_keys(raw, frozenset(ENTRIES), "the net", _MAY_LACK if older else frozenset())
        rd = Reading(older)
        parts = {}
        for key, _, dec in NET:
            if key in raw:
                try:
                    parts[key] = dec(raw[key], rd)
                except Malformed as e:
                    raise e.at(key) from None
        g = parts.pop("nodes")
        for i, (u, w, data) in enumerate(parts.pop("edges")):
            if u not in g or w not in g:
                raise Malformed(f"edge {u!r} -> {w!r} names a node that does not exist").at(f"edges[{i}]")
            if g.has_edge(u, w):
                raise Malformed(f"edge {u!r} -> {w!r} appears twice").at(f"edges[{i}]")
            g.add_edge(u, w, **data)
        return construct(JointNet, {"graph": nx.freeze(g), **parts})
    except Malformed as e:
        raise e.at("net") from None
