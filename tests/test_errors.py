"""Bad input: every invalid rewrite raises a typed `RewriteError` naming the rewrite, the task and
the node (as message and attributes) and leaves the net untouched; compiling an open task raises
`CompileError`; `check` on a hand-corrupted net raises `InvariantError` naming the culprit."""

from __future__ import annotations

import attrs
import networkx as nx
import pytest

import gen
from invariants import assert_rewrite_fails
from jointnet import graph as rw
from jointnet.graph.check import check
from jointnet.execution.compile import compile_net
from jointnet.errors import CompileError, InvariantError, JointNetError, RewriteError
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.net import JointNet
from jointnet.execution.store import ParamStore
from jointnet.graph.draft import apply


@pytest.fixture(scope="module")
def net() -> JointNet:
    """VGG-ish with BatchNorm: t1 closed (with a mask on conv1), t2 bound to t1 and closed,
    t3 registered but open and empty; resnet-style Add merge on t4's own route."""
    n = gen.tiny_backbone("vgg_bn", 3, 4, 5).build("t1", 3)
    n = rw.attach_mask(n, node="conv1", task="t1", granularity="kernel")
    n = rw.add_task(n, task="t2")
    n = rw.bind(n, task="t2", to="t1")
    n = rw.add_head(n, task="t2", n_classes=2)
    n = rw.add_task(n, task="t3")
    # t4: input -> a (conv) -> r (relu) -> a2 (conv) -> m = Add(r, a2) -> gap -> head
    n = rw.add_task(n, task="t4")
    n = rw.add_node(n, node="a", spec={"kind": "conv", "out_ch": 3, "padding": 1}, inputs="input", task="t4")
    n = rw.add_node(n, node="r", spec={"kind": "relu"}, inputs="a", task="t4")
    n = rw.add_node(n, node="a2", spec={"kind": "conv", "out_ch": 3, "padding": 1}, inputs="r", task="t4")
    n = rw.add_node(n, node="m", spec={"kind": "add"}, inputs=["r", "a2"], task="t4")
    n = rw.add_node(n, node="g", spec={"kind": "gap"}, inputs="m", task="t4")
    n = rw.add_head(n, task="t4", n_classes=2)
    # t5 has its own relu after t1's trunk, to make a cycle possible for t1's reroute.
    n = rw.add_task(n, task="t5")
    n = rw.bind(n, task="t5", to="t1")
    n = rw.add_node(n, node="late_relu", spec={"kind": "relu"}, inputs="relu3", task="t5")
    n = rw.add_head(n, task="t5", n_classes=2)
    # t6: bound to t1 (flat features at the end of its route) but still open.
    n = rw.add_task(n, task="t6")
    n = rw.bind(n, task="t6", to="t1")
    return check(n)


CASES = [
    # (rewrite, kwargs, what the message must say)
    ("clone_node", dict(node="conv9", task="t1"), "no node 'conv9'; nodes are"),
    ("clone_node", dict(node="head.t2", task="t1"), "task 't1' does not route through 'head.t2'"),
    ("clone_node", dict(node="conv1", task="t9"), "no task 't9'; tasks are t1, t2, t3, t4, t5, t6"),
    ("clone_node", dict(node="conv1", task="t1", init="zeros"), "init must be 'copy' or 'fresh'"),
    ("clone_node", dict(node="input", task="t1"), "inputs cannot be cloned"),
    ("clone_node", dict(node="conv1", task="t1", new_id="conv2"), "node 'conv2' already exists"),
    ("bind", dict(task="t3", to="t9"), "no task 't9'"),
    ("bind", dict(task="t3", to="t3"), "cannot bind to itself"),
    ("bind", dict(task="t2", to="t1"), "task 't2' already has its head 'head.t2'"),
    ("widen", dict(node="relu1", k=2, task="t1"), "'relu1' is a ReLU; only Conv2d (groups=1) and Linear"),
    ("widen", dict(node="head.t1", k=2, task="t1"), "'head.t1' is a Head"),
    ("widen", dict(node="conv1", k=0, task="t1"), "k must be an int in [1, 16777216] (got 0)"),
    ("widen", dict(node="conv1", k=True, task="t1"), "k must be an int in [1, 16777216] (got True)"),
    ("widen", dict(node="conv1", k=2, task="t1", init="ones"), "init must be 'fresh' or 'zeros'"),
    ("widen", dict(node="a", k=1, task="t4"), "'m' (Add) also adds ['a2'], which would not carry the new channels"),
    ("widen", dict(node="a", k=1, task="t1"), "task 't1' does not route through 'a'"),
    ("add_head", dict(task="t1", n_classes=2), "task 't1' already has its head 'head.t1'"),
    ("add_head", dict(task="t6", n_classes=0), "n_classes must be an int in [1, 16777216] (got 0)"),
    ("add_head", dict(task="t6", share_with="t9"), "no task 't9'"),
    ("add_head", dict(task="t6", share_with="t4"), "node 'head.t4' on the route of task 't6': Head(3->2) expects input (3,), got (5,)"),
    ("add_head", dict(task="t6", share_with="t1", n_classes=7), "shared head 'head.t1' has 3 classes, not 7"),
    ("add_head", dict(task="t6", n_classes=2, after="a"), "'a' is not on the route of task 't6'"),
    ("add_head", dict(task="t3", n_classes=2), "a head needs flat features; 'input' gives (1, 8, 8) (add a Flatten)"),
    ("add_node", dict(node="x", spec={"kind": "relu"}, inputs=["relu3"], task="t1"),
     "task 't1' already has its head 'head.t1'; its route is closed"),
    ("add_node", dict(node="x", spec={"kind": "relu"}, inputs=["relu3"], task="t3"),
     "input 'relu3' is not on the route of task 't3'"),
    ("add_node", dict(node="conv1", spec={"kind": "relu"}, inputs=["input"], task="t3"),
     "node 'conv1' already exists"),
    ("add_node", dict(node="x", spec={"kind": "conv", "out_ch": "8"}, inputs=["input"], task="t3"),
     "out_ch must be an int in [1, 16777216]; got '8'"),
    ("add_node", dict(node="x", spec={"kind": "nope"}, inputs=["input"], task="t3"), "unknown layer kind 'nope'"),
    ("add_node", dict(node="x", spec={"kind": "add"}, inputs=["input"], task="t3"), "Add takes two or more input(s), got 1"),
    ("add_node", dict(node="x", spec={"kind": "linear", "out_f": 3}, inputs=["input"], task="t3"),
     "Linear(1->3) expects input (1,), got (1, 8, 8)"),
    ("add_node", dict(node="x", spec={"kind": "relu"}, inputs=["input"], task="t3", route="no"),
     "route must be a bool (got 'no')"),
    ("add_node", dict(node="x", spec={"kind": "relu"}, inputs=["m"], task="t1", route=False),
     "input 'm' is not on the route of task 't1'"),
    ("reroute", dict(task="t1", node="relu1", to="head.t2"), "'head.t2' is a Head, 'relu1' a ReLU"),
    ("reroute", dict(task="t1", node="relu1", to="m"), "'m' is a Add, 'relu1' a ReLU"),
    ("reroute", dict(task="t1", node="relu1", to="relu2"), "task 't1' already routes through 'relu2'"),
    ("reroute", dict(task="t1", node="relu1", to="late_relu"), "routing 't1' through 'late_relu' would close a cycle"),
    ("reroute", dict(task="t1", node="relu1", to="ghost"), "no node 'ghost'"),
    ("attach_mask", dict(node="conv1", task="t1"), "task 't1' already has a mask on 'conv1'.weight"),
    ("attach_mask", dict(node="fc1", task="t1", granularity="kernel"), "kernel granularity needs a conv weight"),
    ("attach_mask", dict(node="bn1", task="t1", param="running_mean"), "'bn1' (BatchNorm) has no parameter 'running_mean' to mask"),
    ("attach_mask", dict(node="relu1", task="t1"), "'relu1' (ReLU) has no parameter 'weight' to mask"),
    ("attach_mask", dict(node="conv2", task="t1", granularity="row"), "granularity must be one of"),
    ("commit_mask", dict(node="conv2", task="t1"), "task 't1' has no mask on 'conv2'.weight"),
    ("commit_mask", dict(node="conv1", task="t2"), "task 't2' has no mask on 'conv1'.weight"),
    ("release_mask", dict(node="conv2", task="t1"), "task 't1' has no mask on 'conv2'.weight"),
    ("set_lr_scale", dict(nodes="conv1", scale=-0.1, task="t1"), "scale must be a finite number >= 0 (got -0.1)"),
    ("set_lr_scale", dict(nodes="conv1", scale=float("nan"), task="t1"), "scale must be a finite number >= 0"),
    ("set_lr_scale", dict(nodes="conv1", scale="0.1", task="t1"), "scale must be a finite number >= 0 (got '0.1')"),
    ("freeze", dict(nodes=["conv1", "conv9"], task="t1"), "no node 'conv9'"),
    ("freeze", dict(nodes=[], task="t1"), "nodes must be a node id or a non-empty list"),
    ("freeze", dict(nodes="conv1", task="t9"), "no task 't9'"),
    ("clone_node", dict(node="conv1", task="t1", colour="red"), "unknown argument(s) ['colour']"),
    ("clone_node", dict(task="t1"), "missing argument(s) ['node']"),
    ("widen", dict(node="conv1", task="t1"), "missing argument(s) ['k']"),
    ("annotate", dict(key="imp", value={1, 2}, node="conv1"), "annotation values must be"),
    ("annotate", dict(key="imp", value=object(), task="t1"), "(got object)"),
    ("annotate", dict(key="imp", value={1: "a"}, node="conv1"), "annotation dict keys must be strings (got 1)"),
    ("annotate", dict(key="", value=1, node="conv1"), "key must be a non-empty string"),
    ("annotate", dict(key="imp", value=1, node="conv1", param="gamma"), "'conv1' has no parameter 'gamma'"),
    ("annotate", dict(key="imp", value=1, param="weight"), "param needs node"),
    ("own_param", dict(node="fc1", task="t1", params=["running_mean"]), "'fc1' (Linear) has no parameter 'running_mean'"),
    ("own_param", dict(node="bn1", task="t4"), "task 't4' does not route through 'bn1'"),
    ("own_param", dict(node="bn1", task="t1", init="zeros"), "init must be 'copy' or 'fresh'"),
    ("add_task", dict(task="t1"), "task 't1' already exists"),
    ("add_task", dict(task="t9", input="conv1"), "'conv1' is not an input node"),
    ("add_task", dict(task=""), "a task name must be a name of 1-128 characters"),
    ("remove_task", dict(task="t9"), "no task 't9'"),
    ("add_input", dict(node="input", shape=(1, 8, 8)), "node 'input' already exists"),
    ("add_input", dict(node="in2", shape=(0, 8)), "bad input shape (0, 8)"),
]


@pytest.mark.parametrize(
    "name, kwargs, says", CASES, ids=[f"{i:02d}-{c[0]}" for i, c in enumerate(CASES)]
)
def test_invalid_rewrite_raises_rewrite_error(net, name, kwargs, says):
    from jointnet.graph.draft import REWRITES

    e = assert_rewrite_fails(net, REWRITES[name], **kwargs)
    assert isinstance(e, JointNetError)
    assert e.rewrite == name
    assert e.version == net.version
    assert e.task == kwargs.get("task") and e.node == kwargs.get("node")
    msg = str(e)
    assert msg.startswith(f"{name}("), msg
    assert f" at version {net.version}: " in msg, msg
    for arg in ("task", "node"):
        if arg in kwargs:
            assert f"{arg}={kwargs[arg]!r}" in msg, msg
    assert says in msg, msg
    assert e.reason in msg


def test_failed_rewrite_applied_by_name_matches_direct_call(net):
    # `apply` (the CLI and the state machine's path) raises the same error as the direct call.
    with pytest.raises(RewriteError) as by_name:
        apply(net, "clone_node", node="conv9", task="t1")
    with pytest.raises(RewriteError) as direct:
        rw.clone_node(net, node="conv9", task="t1")
    assert str(by_name.value) == str(direct.value)
    with pytest.raises(RewriteError, match=r"no rewrite named 'clone'"):
        apply(net, "clone", node="conv1", task="t1")


def test_rewrite_of_a_non_net_is_a_rewrite_error():
    with pytest.raises(RewriteError, match=r"clone_node\(.*expects a JointNet as first argument, got dict"):
        rw.clone_node({}, node="conv1", task="t1")


def test_own_param_twice_and_noop_rewrites(net):
    once = rw.own_param(net, node="bn1", task="t2")
    e = assert_rewrite_fails(once, rw.own_param, node="bn1", task="t2")
    assert "task 't2' already has its own 'weight' on 'bn1'" in str(e)
    # A rewrite that changes nothing returns its input (not logged), it does not raise.
    assert rw.freeze(rw.freeze(net, nodes="conv1"), nodes="conv1").version == net.version + 1
    assert rw.prune(net) is net
    committed = rw.commit_mask(net, node="conv1", task="t1")
    assert rw.commit_mask(committed, node="conv1", task="t1") is committed


# ---- compile errors -------------------------------------------------------------------------


def test_compile_open_task_raises_compile_error(net):
    store = ParamStore().realize(net)
    with pytest.raises(CompileError, match=r"task 't3' is open \(it has no head yet\)"):
        compile_net(net, store, "t3")
    with pytest.raises(CompileError, match=r"task 't3' is open"):
        compile_net(net, store, None)  # all tasks: t3 among them
    with pytest.raises(CompileError, match=r"no task 't9'; tasks are t1, t2, t3, t4, t5, t6"):
        compile_net(net, store, "t9")
    with pytest.raises(CompileError, match=r"nothing to compile"):
        compile_net(net, store, [])
    # A store that was not realized for the net names the node and the missing tensor.
    with pytest.raises(CompileError, match=r"node 'conv1': tensor 'conv1\.weight@\w+' is not in the store"):
        compile_net(net, ParamStore(), "t1")
    assert compile_net(net, store, ["t1", "t2"]).tasks == ("t1", "t2")


# ---- hand-corrupted nets --------------------------------------------------------------------


def _corrupt(net: JointNet, edit) -> JointNet:
    """`net` with `edit(graph)` applied to a mutable copy of its graph (bypassing rewrites)."""
    g = nx.DiGraph(net.graph)
    for n in g.nodes:  # own attribute dicts, so the original stays intact
        g.nodes[n].update(dict(net.graph.nodes[n]))
    edit(g)
    return JointNet(nx.freeze(g), tasks=net.tasks, policy=net.policy, annotations=net.annotations,
                    version=net.version, log=net.log, lineage=net.lineage)


def _set_node(g, node_id, **changes):
    g.nodes[node_id]["n"] = attrs.evolve(g.nodes[node_id]["n"], **changes)


def _wrong_shape(g):
    node = g.nodes["conv2"]["n"]
    params = tuple(attrs.evolve(p, shape=(4, 3, 5, 5)) if p.name == "weight" else p for p in node.params)
    _set_node(g, "conv2", params=params)


def _duplicate_key(g):
    key = g.nodes["conv1"]["n"].params[0].key
    node = g.nodes["conv2"]["n"]
    _set_node(g, "conv2", params=(attrs.evolve(node.params[0], key=key),) + node.params[1:])


def _missing_block(g):
    node = g.nodes["fc1"]["n"]
    _set_node(g, "fc1", params=tuple(p for p in node.params if p.name != "bias"))


def _foreign_mask(g):
    mask = g.nodes["conv1"]["n"].masks[0]
    _set_node(g, "conv1", masks=(attrs.evolve(mask, task="t4"),))


CORRUPTIONS = [
    ("unknown-task-edge", lambda g: g.add_edge("conv1", "bn1", tasks=frozenset({"t1", "ghost"}), port=0),
     r"edge 'conv1' -> 'bn1' is routed for unknown task 'ghost'"),
    ("wrong-param-shape", _wrong_shape,
     r"parameter 'weight' block \(None, None\) of node 'conv2' has shape \(4, 3, 5, 5\), wants \(4, 3, 3, 3\)"),
    ("cycle", lambda g: g.add_edge("relu3", "conv1", tasks=frozenset({"t1"}), port=1), r"the graph has a cycle"),
    ("head-feeds", lambda g: g.add_edge("head.t1", "late_relu", tasks=frozenset({"t5"}), port=1),
     r"head 'head.t1' feeds 'late_relu'"),
    ("empty-edge", lambda g: g.add_edge("input", "r", tasks=frozenset(), port=0),
     r"edge 'input' -> 'r' carries no tasks"),
    ("bad-port", lambda g: g.add_edge("conv1", "bn1", tasks=frozenset({"t1", "t2", "t5"}), port=-1),
     r"edge 'conv1' -> 'bn1' has bad port -1"),
    ("node-id", lambda g: _set_node(g, "conv2", id="conv3"), r"node 'conv2' holds a Node with id 'conv3'"),
    ("second-input", lambda g: g.add_edge("a", "a2", tasks=frozenset({"t4"}), port=1),
     r"node 'a2' gets 2 input\(s\) on the route of task 't4'; it takes 1"),
    ("dangling-end", lambda g: g.remove_edge("relu3", "head.t1"),
     r"the route of task 't1' ends at \['relu3'\], not only at its head 'head.t1'"),
    ("shape-mismatch", lambda g: _set_node(g, "fc1", spec=attrs.evolve(g.nodes["fc1"]["n"].spec, in_f=7)),
     r"node 'fc1'"),
    ("duplicate-key", _duplicate_key, r"tensor key 'conv1\.weight@\w+' is used by 'conv1' and 'conv2'"),
    ("missing-block", _missing_block, r"node 'fc1' lacks parameter blocks \[\('bias', \(None, None\)\)\]"),
    ("foreign-mask", _foreign_mask, r"node 'conv1' has a mask for 't4', which does not route through it"),
]


@pytest.mark.parametrize("edit, pattern", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_check_names_the_culprit(net, edit, pattern):
    bad = _corrupt(net, edit)
    with pytest.raises(InvariantError, match=pattern):
        check(bad)
    check(net)  # the original is intact


def test_check_rejects_policy_for_unknown_names(net):
    from jointnet.graph.net import NodePolicy

    bad = attrs.evolve(net, policy=FrozenDict({("ghost", "conv1"): NodePolicy(frozen=True)}))
    with pytest.raises(InvariantError, match=r"policy names unknown task 'ghost'"):
        check(bad)
    bad = attrs.evolve(net, policy=FrozenDict({(None, "conv9"): NodePolicy(frozen=True)}))
    with pytest.raises(InvariantError, match=r"policy names unknown node 'conv9'"):
        check(bad)


def test_reroute_that_would_hide_masked_channels_is_refused():
    # t1 grows conv1 and masks conv2 over the grown input channels; rerouting t1 through a conv1
    # copy without those channels would leave the mask larger than what t1 sees.
    net = gen.tiny_backbone("small_conv", 3, 4, 5).build("t1", 3)
    net = rw.add_head(rw.bind(rw.add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    net = rw.clone_node(net, node="conv1", task="t2")
    net = rw.widen(net, node="conv1", k=2, task="t1")
    net = rw.attach_mask(net, node="conv2", task="t1", granularity="kernel")
    e = assert_rewrite_fails(net, rw.reroute, task="t1", node="conv1", to="conv1.t2")
    assert "task 't1''s mask mask on 'conv2'.weight covers block (None, 'conv1+t1@17'), which it would not see" in str(e)
    assert (e.rewrite, e.task, e.node) == ("reroute", "t1", "conv1")
    # Without the mask the same reroute is fine.
    check(rw.reroute(rw.release_mask(net, node="conv2", task="t1"), task="t1", node="conv1", to="conv1.t2"))
