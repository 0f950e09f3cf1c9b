"""A Hypothesis state machine driving random sequences of the primitive rewrites.

Each rule applies a rewrite to the net (and, for routes and node sets, to a simple reference
model), then the invariants below run after every step:

- `check(net)` holds, and the reference model agrees with `net.route` / `net.users` / nodes;
- every earlier version is unchanged (structure and version as recorded when it was made);
- `replay(net.log) == net`; the snapshot round trip gives an equal net and bit-identical outputs
  (when `jointnet.persistence.snapshot` exists);
- the multi-task compile gives bit-identical outputs to the single-task compiles, and open tasks
  do not compile.

Per step: the version rises by exactly one per effective rewrite with `log[-1].name` the
rewrite's name; a rewrite that fails raises `RewriteError` naming itself and leaves the net as it
was; and every task other than the one a rewrite acts on computes bit-identical outputs
(eval mode, fixed probe batch) after the store is realized for the new net. Between rewrites a
task is sometimes trained for 1-2 SGD steps, so copies and shared tensors behave differently.
"""

from __future__ import annotations

import itertools
import math

import attrs
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

import gen
import invariants as inv
from jointnet import graph as rw
from jointnet.graph.check import check
from jointnet.errors import JointNetError, RewriteError
from jointnet.graph.frozen import freeze as freeze_value
from jointnet.graph.net import NodePolicy
from jointnet.execution.store import ParamStore
from jointnet.graph.draft import replay
from jointnet.graph.layers.factorized import DFConv2d, TFConv2d
from jointnet.graph.shapes import route_sink, task_shapes
from jointnet.execution.optim import fit, param_groups, train_plan

MAX_TASKS = 5
_CONVS = frozenset({"Conv2d", "TFConv2d", "DFConv2d"})
# Kinds a widening passes through on its way to the next Conv2d / Linear / Head.
_CHANNEL_PASSING = {"BatchNorm", "ReLU", "MaxPool2d", "AvgPool2d", "GlobalAvgPool", "Flatten", "Dropout",
                    "Identity", "Gate"}


def _widen_ok(net, node: str) -> bool:
    """Whether widening `node` can propagate: no Add/Concat before the next consumers."""
    stack, seen = list(net.graph.successors(node)), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        kind = net.node(n).kind
        if kind in ("Add", "Concat") or (kind == "Conv2d" and net.node(n).spec.groups != 1):
            return False
        if net.node(n).spec.channels == "none":  # e.g. a generated conv: growth cannot pass it
            return False
        if kind in _CHANNEL_PASSING:
            stack.extend(net.graph.successors(n))
    return True


def _coupled(net, task: str, add: str) -> list[str] | None:
    """The producers whose outputs meet (through pass-through and per-channel nodes) in `add`
    and in every Add their channels reach: widened together, they keep a residual stream
    aligned. None when an input of such an Add comes from something that cannot widen."""
    producers: set[str] = set()
    adds: set[str] = set()
    todo = [add]
    while todo:
        a = todo.pop()
        if a in adds:
            continue
        adds.add(a)
        for u in net.inputs_of(a, task):
            stack = [u]
            while stack:
                n = stack.pop()
                rule = net.node(n).spec.channels
                if rule == "produce":
                    producers.add(n)
                elif rule in ("follow", "pass"):
                    stack.extend(net.inputs_of(n, task))
                elif rule == "merge":
                    todo.append(n)
                else:
                    return None
        # Forward: every Add the producers' channels reach joins the set.
        stack = [w for p in producers for w in net.graph._succ[p]]
        seen = set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            rule = net.node(n).spec.channels
            if rule == "merge" and n not in adds:
                todo.append(n)
            if rule in ("follow", "pass", "merge"):
                stack.extend(net.graph._succ[n])
    return sorted(producers)


class JointNetMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.net = None
        self.ids = itertools.count()

    # ---- set-up -------------------------------------------------------------------------------

    @initialize(backbone=gen.backbones(), classes=gen.n_classes, extra=st.lists(gen.n_classes, max_size=2))
    def start(self, backbone, classes, extra):
        self.bb = backbone
        self.net = check(backbone.build("t1", classes))
        self.store = ParamStore(seed=0).realize(self.net)
        self.x = gen.probe(backbone.input_shape)
        self.history = [(self.net, self.net.version, self.net.structure())]
        self.born = {n: self.net.version for n in self.net.nodes}  # node -> version that added it
        route = self.net.route("t1")
        assert route[0] == "input" and route[-1] == "head.t1"
        # The reference model: per task its route edges, input and head; the node set.
        self.ref_edges = {"t1": inv.route_edges(self.net, "t1")}
        self.ref_input = {"t1": "input"}
        self.ref_head = {"t1": "head.t1"}
        self.ref_nodes = set(route)
        self.refs: list[str] = []  # store keys for TensorRef annotations
        # Most interesting states have tasks sharing t1's trunk: start with up to two.
        for n in extra:
            t = self._fresh("t")
            self._apply(rw.add_task, task=t, acted=(t,))
            self._apply(rw.bind, task=t, to="t1", acted=(t,))
            self._apply(rw.add_head, task=t, n_classes=n, acted=(t,))
            (end,) = [u for u, v, _ in self.ref_edges["t1"] if v == "head.t1"]
            self.ref_edges[t] = {e for e in self.ref_edges["t1"] if e[1] != "head.t1"} | {(end, f"head.{t}", 0)}
            self.ref_input[t], self.ref_head[t] = "input", f"head.{t}"
            self.ref_nodes.add(f"head.{t}")

    # ---- helpers ------------------------------------------------------------------------------

    def _fresh(self, prefix: str) -> str:
        """A name no node or task of any version has had (the backbone uses t1 and short names)."""
        return f"{prefix}{next(self.ids)}x"

    def _closed(self) -> list[str]:
        return [t for t in self.net.tasks if self.net.tasks[t].head is not None]

    def _open(self) -> list[str]:
        return [t for t in self.net.tasks if self.net.tasks[t].head is None]

    def _on_route(self, kinds=None, tasks=None):
        """(task, node) pairs, node on task's route (inputs excluded), optionally of `kinds`."""
        out = []
        for t in self.net.tasks if tasks is None else tasks:
            for n in self.net.route(t):
                kind = self.net.node(n).kind
                if kind != "Input" and (kinds is None or kind in kinds):
                    out.append((t, n))
        return out

    def _pick(self, data, good: list, bad: list, label: str):
        """Mostly an item of `good`, about one time in ten one of `bad` (an invalid pick); None
        when both are empty."""
        if bad and (not good or data.draw(st.integers(0, 9), label="pick_bad") == 0):
            return data.draw(st.sampled_from(bad), label=label)
        return data.draw(st.sampled_from(good), label=label) if good else None

    def _apply(self, fn, *, expect: str = "change", acted=(), **kwargs):
        """Apply rewrite `fn` and check what every step must satisfy.

        expect: ``change`` (must give a new version), ``error`` (must raise RewriteError),
        ``nochange`` (must return the same net), ``maybe`` (change or no change), ``any``.
        acted: the tasks whose outputs may change; every other task's must be bit-identical.
        Returns the new net, or None when the rewrite raised.
        """
        name = fn.rewrite_name
        before = self.net
        version, structure = before.version, before.structure()
        out_before = inv.outputs(before, self.store, self.x)
        try:
            new = fn(before, **kwargs)
        except RewriteError as e:
            assert expect in ("error", "any"), f"{name}({kwargs}) raised unexpectedly: {e}"
            assert e.rewrite == name and name in str(e)
            assert e.version == version
            assert before.version == version and before.structure() == structure
            return None
        assert expect != "error", f"{name}({kwargs}) should have raised RewriteError"
        if new is before:
            assert expect in ("nochange", "maybe", "any"), f"{name}({kwargs}) changed nothing"
            assert before.structure() == structure
            return before
        assert expect != "nochange", f"{name}({kwargs}) should have changed nothing"
        assert new.version == version + 1, (new.version, version)
        assert len(new.log) == len(before.log) + 1
        assert new.log[-1].name == name
        logged = dict(new.log[-1].kwargs)
        for k, v in kwargs.items():
            assert logged[k] == freeze_value(v), (k, logged[k], v)
        assert before.structure() == structure, "the rewrite changed its input"
        check(new)
        self.store.realize(new)
        out_after = inv.outputs(new, self.store, self.x)
        others = [t for t in out_before if t in out_after and t not in acted]
        inv.assert_outputs_equal(out_before, out_after, others, f"{name}({kwargs})")
        self.net = new
        self.history.append((new, new.version, new.structure()))
        self.born.update({n: new.version for n in set(new.nodes) - set(before.nodes)})
        self._out_before = out_before
        return new

    def _replace_in_route(self, task: str, old: str, new: str) -> None:
        self.ref_edges[task] = {
            (new if u == old else u, new if v == old else v, p) for u, v, p in self.ref_edges[task]
        }
        if self.ref_head[task] == old:
            self.ref_head[task] = new
        self.ref_nodes.add(new)

    # ---- tasks --------------------------------------------------------------------------------

    @precondition(lambda self: self.net is not None and len(self.net.tasks) < MAX_TASKS)
    @rule(data=st.data())
    def new_task(self, data):
        t = self._fresh("t")
        mode = data.draw(st.sampled_from(["bind", "bind_extend", "own", "open_bind", "open_empty",
                                          "route_through", "new_input"]), label="mode")
        source = "input"
        if mode == "new_input":
            source = self._fresh("in")
            self._apply(rw.add_input, node=source, shape=list(self.bb.input_shape), acted=())
            self.ref_nodes.add(source)
            self._apply(rw.add_task, task=t, input=source, acted=(t,))
        elif len(self.net._index().inputs) > 1:
            self._apply(rw.add_task, task=t, input="input", acted=(t,))
        else:
            self._apply(rw.add_task, task=t, acted=(t,))
        self.ref_edges[t], self.ref_input[t], self.ref_head[t] = set(), source, None
        if mode == "route_through" and self._closed():
            like = data.draw(st.sampled_from([u for u in self._closed() if self.ref_input[u] == "input"] or [None]),
                             label="like")
            if like is not None:
                inner = [n for n in self.net.route(like) if n not in ("input", self.net.tasks[like].head)]
                if inner:
                    upto = data.draw(st.sampled_from(inner), label="upto")
                    new = self._apply(rw.route_through, task=t, like=like, upto=[upto], acted=(t,))
                    self.ref_edges[t] = inv.route_edges(new, t)
                    assert self.ref_edges[t] <= self.ref_edges[like]
                    assert upto in new.route(t) and new.users(upto) >= {t, like}
            self._extend(t, data)
            self._close(t, data)
            return
        if mode == "new_input":
            for _ in range(data.draw(st.integers(1, 2), label="n_layers")):
                self._extend(t, data)
            self._close(t, data)
            return
        same_input = [u for u in self._closed() if self.ref_input[u] == "input"]
        if mode != "own" and mode != "open_empty" and same_input:
            to = data.draw(st.sampled_from(same_input), label="bind_to")
            self._apply(rw.bind, task=t, to=to, acted=(t,))
            self.ref_edges[t] = {e for e in self.ref_edges[to] if e[1] != self.ref_head[to]}
        if mode in ("bind_extend", "own"):
            for _ in range(data.draw(st.integers(1, 3), label="n_layers")):
                self._extend(t, data)
        if not mode.startswith("open"):
            self._close(t, data)

    @precondition(lambda self: self.net is not None and any(i.head is None for i in self.net.tasks.values()))
    @rule(data=st.data())
    def grow_open(self, data):
        t = data.draw(st.sampled_from(self._open()), label="task")
        self._extend(t, data)

    @precondition(lambda self: self.net is not None and any(i.head is None for i in self.net.tasks.values()))
    @rule(data=st.data())
    def close_open(self, data):
        self._close(data.draw(st.sampled_from(self._open()), label="task"), data)

    def _extend(self, t: str, data) -> None:
        """add_node one layer after the end of `t`'s open route (or a merge of two of its nodes)."""
        shapes = task_shapes(self.net, t)
        sinks = route_sink(self.net, t)
        sink = sinks[-1]
        shape = shapes[sink]
        same = [n for n in self.net.route(t) if n != sink and shapes[n] == shape
                and self.net.node(n).kind != "Input"]
        choices = ["relu", "identity"]
        if len(shape) == 3:
            choices += ["conv", "bn", "gap", "flatten"] + (["maxpool"] if min(shape[1:]) >= 2 else [])
        else:
            choices += ["linear", "dropout"]
        if same:
            choices += ["add", "concat"]
        choices.append("gate")
        kind = data.draw(st.sampled_from(choices), label="layer")
        inputs = [sink]
        if kind == "conv":
            spec = {"kind": "conv", "out_ch": data.draw(gen.widths), "padding": 1}
        elif kind == "linear":
            spec = {"kind": "linear", "out_f": data.draw(gen.widths)}
        elif kind == "dropout":
            spec = {"kind": "dropout", "p": 0.25}
        elif kind in ("add", "concat"):
            spec = {"kind": kind}
            inputs = [data.draw(st.sampled_from(same), label="merge_with"), sink]
        else:
            spec = {"kind": kind}
        node = self._fresh("n")
        # A tuple must log (and replay) as the same list would.
        given = tuple(inputs) if data.draw(st.booleans(), label="as_tuple") else inputs
        self._apply(rw.add_node, node=node, spec=spec, inputs=given, task=t, acted=(t,))
        self.ref_edges[t] |= {(u, node, i) for i, u in enumerate(inputs)}
        self.ref_nodes.add(node)

    def _close(self, t: str, data) -> None:
        """add_head to `t` (a Flatten first if its route ends in images), maybe sharing a head."""
        sink = route_sink(self.net, t)[-1]
        if len(task_shapes(self.net, t)[sink]) != 1:
            node = self._fresh("n")
            self._apply(rw.add_node, node=node, spec={"kind": "flatten"}, inputs=[sink], task=t, acted=(t,))
            self.ref_edges[t].add((sink, node, 0))
            self.ref_nodes.add(node)
            sink = node
        width = task_shapes(self.net, t)[sink][0]
        sharable = [u for u in self._closed() if self.net.node(self.net.tasks[u].head).spec.in_f == width]
        shared = None
        if sharable and data.draw(st.booleans(), label="share_head"):
            other = data.draw(st.sampled_from(sharable), label="share_with")
            # The head's full width matches, but the channel groups t would see through it may
            # not: either a new route or a clear error.
            shared = self._apply(rw.add_head, task=t, share_with=other, acted=(t,), expect="any")
            head = self.net.tasks[other].head
        if shared is None:
            node = data.draw(st.sampled_from([None, self._fresh("h")]), label="head_id")
            after = data.draw(st.sampled_from([None, sink]), label="after")
            self._apply(rw.add_head, task=t, n_classes=data.draw(gen.n_classes), node=node, after=after, acted=(t,))
            head = node or f"head.{t}"
        self.ref_edges[t].add((sink, head, 0))
        self.ref_head[t] = head
        self.ref_nodes.add(head)
        # Closing twice is an error.
        inv.assert_rewrite_fails(self.net, rw.add_head, task=t, n_classes=2)

    @precondition(lambda self: self.net is not None and len(self.net.tasks) >= 2)
    @rule(data=st.data())
    def remove_task(self, data):
        closed = self._closed()
        pool = list(self.net.tasks) if len(closed) > 1 else self._open()
        if not pool:
            return
        t = data.draw(st.sampled_from(pool), label="task")
        self._apply(rw.remove_task, task=t, acted=(t,))
        for ref in (self.ref_edges, self.ref_input, self.ref_head):
            del ref[t]
        assert t not in self.net.tasks
        assert not any(k[0] == t for k in self.net.policy)
        for n in self.net.nodes:
            node = self.net.node(n)
            assert all(p.task != t for p in node.params) and all(m.task != t for m in node.masks)

    @precondition(lambda self: self.net is not None)
    @rule()
    def prune(self):
        users = self._ref_users()
        dead = {n for n in self.ref_nodes if not users.get(n)}
        self._apply(rw.prune, expect="change" if dead else "nochange")
        self.ref_nodes -= dead

    # ---- structure ----------------------------------------------------------------------------

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def clone(self, data):
        t, node = data.draw(st.sampled_from(self._on_route()), label="task_node")
        init = data.draw(st.sampled_from(["copy", "fresh"]), label="init")
        new_id = data.draw(st.sampled_from([None, self._fresh("c")]), label="new_id")
        expect_id = new_id
        if expect_id is None:
            expect_id, i = f"{node}.{t}", 2
            while expect_id in self.net:
                expect_id, i = f"{node}.{t}.{i}", i + 1
        src = self.net
        grid = src.params_for(t, node)
        policy = src.policy.get((t, node))
        # A copy computes what the source computed, so even `t`'s outputs stay the same.
        new = self._apply(rw.clone_node, node=node, task=t, init=init, new_id=new_id,
                          acted=(t,) if init == "fresh" else ())
        self._replace_in_route(t, node, expect_id)
        clone = new.node(expect_id)
        assert clone.cloned_from == node and clone.spec == src.effective_spec(t, node)
        assert node not in new.route(t) and expect_id in new.route(t)
        assert new.users(expect_id) == {t}
        assert all(m.task != t for m in new.node(node).masks)
        # t's own policy entry moves to the clone; the all-task entry stays with the source.
        assert new.policy.get((t, expect_id)) == policy and (t, node) not in new.policy
        src_keys = {p.key for rows in grid.values() for row in rows for p in row}
        for p in clone.params:
            assert p.key not in src_keys
            if init == "copy":
                a, b = self.store[p.key], self.store[p.init.src]
                assert p.init.src in src_keys
                assert torch.equal(a, b) and a is not b and a.data_ptr() != b.data_ptr()
        if init == "copy":
            assert sum(p.numel for p in clone.params) == sum(
                p.numel for rows in grid.values() for row in rows for p in row)

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def reroute(self, data):
        pairs = []
        for t, n in self._on_route():
            kind = self.net.node(n).kind
            route = set(self.net.route(t))
            pairs += [(t, n, m) for m in self.net.nodes if m not in route and self.net.node(m).kind == kind]
            # A generated conv replaces a plain one and back (LASEM's alternatives of a slot).
            if kind in _CONVS:
                pairs += [(t, n, m) for m in self.net.nodes
                          if m not in route and self.net.node(m).kind in _CONVS - {kind}]
        if not pairs:
            return
        t, node, to = data.draw(st.sampled_from(pairs), label="reroute")
        # Shapes, ports or a cycle may forbid it: either outcome, but a failure changes nothing.
        new = self._apply(rw.reroute, task=t, node=node, to=to, acted=(t,), expect="any")
        if new is not None:
            self._replace_in_route(t, node, to)
            assert all(p.task != t for p in new.node(node).params)

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def alternative(self, data):
        """add_node(route=False): a node beside `node` on `t`'s route, fed as `node` is, that no
        task uses until a reroute sends one through it (of the same kind, or a generated conv
        for a plain one)."""
        # Beside nodes whose width no channel group changes: an alternative is a plain layer of
        # the width `t` sees, so it could not follow a later compact of a group it was built over.
        picks = [(t, n) for t, n in self._on_route({"Conv2d", "Linear", "ReLU"})
                 if len(self.net.inputs_of(n, t)) == 1 and self.net.effective_spec(t, n) == self.net.node(n).spec
                 and not self.net.node(n).in_groups and not self.net.node(n).out_groups]
        if not picks:
            return
        t, n = data.draw(st.sampled_from(picks), label="task_node")
        spec = self.net.effective_spec(t, n)
        if spec.kind == "Conv2d" and spec.groups == 1 and spec.dilation == 1:
            kind = data.draw(st.sampled_from(["DFConv2d", "TFConv2d", "Conv2d"]), label="kind")
            geo = dict(in_ch=spec.in_ch, out_ch=spec.out_ch, stride=spec.stride, padding=spec.padding)
            if kind == "TFConv2d":
                spec = TFConv2d(kernel=spec.kernel, **geo)
            elif kind == "DFConv2d" and spec.kernel % 2:
                spec = DFConv2d(kernel=spec.kernel, kb_ch=2, ts_ch=3, **geo)
        node = self._fresh("alt")
        new = self._apply(rw.add_node, node=node, spec=spec, inputs=self.net.inputs_of(n, t), task=t,
                          route=False, acted=())
        self.ref_nodes.add(node)
        assert new.users(node) == set() and node not in new.route(t)
        assert new.log[-1].kwargs["route"] is False
        # Only added: routing stays as it was, so no task's output moved (checked by _apply).
        if data.draw(st.booleans(), label="use"):  # and used: t now computes through it
            # Channels grown at `n` reach its successors only through `n` (the producer that grew
            # them), so after a widen the shapes may disagree: then the reroute is refused.
            if self._apply(rw.reroute, task=t, node=n, to=node, acted=(t,), expect="any") is not None:
                self._replace_in_route(t, n, node)
                assert self.net.users(node) == {t}

    # ---- channels -----------------------------------------------------------------------------

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def widen(self, data):
        # Heads and ReLUs are never widened.
        pick = self._pick(data, self._on_route({"Conv2d", "Linear"}), self._on_route({"Head", "ReLU"}), "task_node")
        if pick is None:
            return
        t, node = pick
        k = data.draw(st.integers(1, 3), label="k")
        init = data.draw(st.sampled_from(["fresh", "zeros"]), label="init")
        ok = self.net.node(node).kind in ("Conv2d", "Linear") and _widen_ok(self.net, node)
        before = self.net
        specs = {(u, n): before.effective_spec(u, n) for u in before.tasks for n in before.route(u)}
        # Through an Add the growth passes when every input of it carries the channels.
        merge = self.net.node(node).kind in ("Conv2d", "Linear") and not ok
        new = self._apply(rw.widen, node=node, k=k, task=t, init=init, acted=(t,),
                          expect="change" if ok else "any" if merge else "error")
        if new is None:
            return
        old_w = before.node(node).spec.params()["weight"].shape[0]
        assert new.node(node).spec.params()["weight"].shape[0] == old_w + k
        group = new.node(node).out_groups[-1]
        assert (group.owner, group.size, group.created_at) == (t, k, before.version + 1)
        eff = new.effective_spec(t, node).params()["weight"].shape[0]
        assert eff == before.effective_spec(t, node).params()["weight"].shape[0] + k
        for (u, n), spec in specs.items():
            if u != t:
                assert new.effective_spec(u, n) == spec, f"widen for {t} changed {n!r} for {u}"
        if init == "zeros" and t in self._out_before:
            # New input columns start at zero: the owner's function is (numerically) the same.
            after = inv.outputs(new, self.store, self.x, [t])[t]
            assert torch.allclose(after, self._out_before[t], atol=1e-5, rtol=1e-4)
        # GROWN-style: a mask for t over a node that now holds grown channel blocks.
        blocks = [(n, name) for n in new.route(t)
                  if new.node(n).out_groups or new.node(n).in_groups
                  for name, info in new.effective_spec(t, n).params().items()
                  if not info.buffer and not new.node(n).masks_of(t, name, "mask")]
        if blocks and data.draw(st.booleans(), label="mask_grown"):
            n, name = data.draw(st.sampled_from(blocks), label="grown_param")
            self._apply(rw.attach_mask, node=n, task=t, param=name, acted=(t,),
                        granularity=data.draw(st.sampled_from(["param", "channel"]), label="granularity"),
                        transform=data.draw(st.sampled_from(["sigmoid", "hard", "identity"]), label="transform"),
                        init=data.draw(st.sampled_from(["zeros", "ones"]), label="init"))

    def _maskable(self, buffers: bool = False):
        out = []
        for t, n in self._on_route({"Conv2d", "Linear", "Head", "BatchNorm"}):
            for name, info in self.net.effective_spec(t, n).params().items():
                if info.buffer == buffers:
                    out.append((t, n, name))
        return out

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def attach_mask(self, data):
        # Mostly parameters without a mask of the kind yet; buffers and masked ones are invalid picks.
        kind = data.draw(st.sampled_from(["mask", "mask", "sel"]), label="kind")
        params = self._maskable()
        free = [(t, n, p) for t, n, p in params if not self.net.node(n).masks_of(t, p, kind)]
        taken = [x for x in params if x not in free]
        grown = [(t, n, p) for t, n, p in free if self.net.node(n).out_groups or self.net.node(n).in_groups]
        if grown and data.draw(st.booleans(), label="on_grown"):
            free = grown  # masks over grown (block-built) parameters are the tricky case
        pick = self._pick(data, free, self._maskable(buffers=True) + taken, "mask_on")
        if pick is None:
            return
        t, node, param = pick
        info = self.net.effective_spec(t, node).params().get(param)
        kernel_ok = info is not None and len(info.shape) == 4
        # Kernel granularity is only valid on conv weights: elsewhere an occasional invalid pick.
        granularity = data.draw(st.sampled_from(["param", "kernel", "channel"] if kernel_ok
                                                else ["param", "channel", "param", "channel", "kernel"]),
                                label="granularity")
        transform = data.draw(st.sampled_from(["identity", "sigmoid", "hard", "gumbel"]), label="transform")
        init = data.draw(st.sampled_from(["ones", "zeros"]), label="init")
        n = self.net.node(node)
        blocks = None
        if info is not None and not info.buffer:
            visible = [p.block for row in self.net.params_for(t, node)[param] for p in row]
            if len(visible) > 1 and data.draw(st.booleans(), label="some_blocks"):
                blocks = data.draw(st.lists(st.sampled_from(visible), min_size=1, unique=True), label="blocks")
        # Masks are per block: refused when one of the blocks asked for already has this kind.
        ok = (info is not None and not info.buffer
              and not any(n.mask(t, param, kind, b) is not None for b in (blocks or visible))
              and (granularity != "kernel" or len(info.shape) == 4))
        # An identity mask of ones multiplies by exactly 1: even `t` computes the same.
        same = transform == "identity" and init == "ones"
        extra = {} if kind == "mask" else {"kind": kind}
        if blocks is not None:
            extra["blocks"] = [list(b) for b in blocks]
        one = blocks if blocks is not None and len(blocks) == 1 else (
            visible if info is not None and not info.buffer and len(visible) == 1 else None)
        if ok and one is not None and data.draw(st.booleans(), label="where"):
            # `where`: a bool set of the mask's shape; the mask acts only on those entries
            shape = [p.shape for row in self.net.params_for(t, node)[param] for p in row if p.block == one[0]][0]
            shape = {"param": shape, "kernel": shape[:2], "channel": shape[:1]}[granularity]
            key = self._fresh("where")
            g = torch.Generator().manual_seed(len(self.net.log))
            self.store.put(key, torch.rand(shape, generator=g) > 0.5)
            extra.update(blocks=[list(one[0])], where=key)
        new = self._apply(rw.attach_mask, node=node, task=t, param=param, granularity=granularity,
                          transform=transform, init=init, acted=() if same else (t,),
                          expect="change" if ok else "error", **extra)
        if new is not None:
            chosen = set(blocks or visible)
            masks = [m for m in new.node(node).masks_of(t, param, kind) if m.block in chosen]
            assert masks and all(m.state == "live" and m.granularity == granularity for m in masks)
            assert all(m.where == extra.get("where") for m in masks)
            assert {m.block for m in masks} == chosen
            for m in masks:
                assert tuple(self.store[m.key].shape) == m.shape
                assert m.key in param_groups_keys(new, self.store, t) or self._frozen_for(new, t, node)

    def _frozen_for(self, net, t, node):
        pol = net.policy_for(t, node)
        return pol.frozen or pol.lr_scale == 0

    def _masks(self):
        return sorted({(m.task, n, m.param, m.kind) for n in self.net.nodes for m in self.net.node(n).masks})

    @precondition(lambda self: self.net is not None and self._masks())
    @rule(data=st.data())
    def commit_mask(self, data):
        t, node, param, kind = data.draw(st.sampled_from(self._masks()), label="mask")
        committed = all(m.state == "committed" for m in self.net.node(node).masks_of(t, param, kind))
        threshold = data.draw(st.sampled_from([0.5, 0.0, -1.0]), label="threshold")
        extra = {} if kind == "mask" else {"kind": kind}
        new = self._apply(rw.commit_mask, node=node, task=t, param=param, threshold=threshold,
                          acted=(t,), expect="nochange" if committed else "change", **extra)
        for m in new.node(node).masks_of(t, param, kind):
            assert m.state == "committed" and m.transform == "identity"
            packed = self.store[m.key]
            assert packed.dtype == torch.uint8 and packed.numel() == (math.prod(m.shape) + 7) // 8
            bits = self.store.unpacked(m.key, m.shape)
            assert not packed.requires_grad and set(bits.unique().tolist()) <= {0.0, 1.0}
            assert m.key not in param_groups_keys(new, self.store, t)

    @precondition(lambda self: self.net is not None and self._masks())
    @rule(data=st.data())
    def release_mask(self, data):
        t, node, param, kind = data.draw(st.sampled_from(self._masks()), label="mask")
        extra = {} if kind == "mask" else {"kind": kind}
        new = self._apply(rw.release_mask, node=node, task=t, param=param, acted=(t,), **extra)
        assert not new.node(node).masks_of(t, param, kind)

    def _groups(self):
        """(holder producer, group) pairs of every channel group."""
        return [(n, g) for n in self.net.nodes if self.net.node(n).spec.producer for g in self.net.node(n).out_groups]

    @precondition(lambda self: self.net is not None and self._groups())
    @rule(data=st.data())
    def compact(self, data):
        n, g = data.draw(st.sampled_from(self._groups()), label="group")
        keep = sorted(data.draw(st.sets(st.integers(0, g.size - 1), max_size=g.size), label="keep"))
        # Every task that sees the group may compute something else; the others never saw it.
        seers = {t for t in self.net.tasks for m in self.net.nodes
                 if any(x.id == g.id for x in self.net.node(m).out_groups)
                 and m in self.net.route(t) and self.net.group_visible(t, g)}
        specs = {(u, m): self.net.effective_spec(u, m) for u in self.net.tasks if u not in seers
                 for m in self.net.route(u)}
        # A node added after the group grew, on the route of a task that sees the group, takes
        # its channels as plain columns (a head closing the owner's route, a later task's node):
        # compact is then refused, never left mis-sized.
        late = any(self.born.get(m, 0) > g.created_at and self.net.node(m).spec.channels != "pass" and not any(
            x.id == g.id for x in self.net.node(m).out_groups + self.net.node(m).in_groups)
            for u in seers for m in self.net.route(u))
        new = self._apply(rw.compact, group=g.id, keep=keep, acted=tuple(seers),
                          expect="nochange" if len(keep) == g.size else "any" if late else "change")
        if new is None:
            return
        holders = [m for m in new.nodes if any(x.id == g.id for x in new.node(m).out_groups)]
        if not keep:
            assert not holders
        else:
            assert all(next(x for x in new.node(m).out_groups if x.id == g.id).size == len(keep) for m in holders)
        for (u, m), spec in specs.items():
            assert new.effective_spec(u, m) == spec, f"compacting {g.id} changed {m!r} for {u}"

    def _adds(self):
        return [(t, n) for t, n in self._on_route({"Add"})]

    @precondition(lambda self: self.net is not None and self._adds())
    @rule(data=st.data())
    def widen_coupled(self, data):
        t, add = data.draw(st.sampled_from(self._adds()), label="add")
        producers = _coupled(self.net, t, add)
        if not producers:
            return
        k = data.draw(st.integers(1, 2), label="k")
        new = self._apply(rw.widen, node=producers, k=k, task=t, acted=(t,), expect="any")
        if new is None:
            return
        gid = new.node(producers[0]).out_groups[-1].id
        assert all(new.node(p).out_groups[-1].id == gid for p in producers)
        shapes = task_shapes(new, t)
        ins = [shapes[u] for u in new.inputs_of(add, t)]
        assert len(set(ins)) == 1  # the stream stays aligned

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def grad_rule(self, data):
        """Attach a gradient rule (a freeze rule from owner maps, or a 0/1 multiplier of the
        update); `train` checks that training keeps the entries they protect bit-identical."""
        picks = [(t, n) for t, n in self._on_route({"Conv2d", "Linear"})
                 if not self.net.node(n).out_groups and not self.net.node(n).in_groups]
        if not picks:
            return
        t, node = data.draw(st.sampled_from(picks), label="task_node")
        p = self.net.node(node).param("weight")
        how = data.draw(st.sampled_from(["owned", "update"]), label="how")
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 99), label="seed"))
        if how == "owned":
            gran = data.draw(st.sampled_from(["param", "kernel", "channel"] if len(p.shape) == 4
                                             else ["param", "channel"]), label="granularity")
            if p.owners is None:
                self._apply(rw.track_owners, node=node, param="weight", granularity=gran, acted=())
                p = self.net.node(node).param("weight")
            numbers = [0] + [self.net.tasks[u].added_at for u in self.net.tasks]
            shape = p.owners.shape(p.shape)
            values = torch.tensor(numbers, dtype=torch.int32)[torch.randint(0, len(numbers), shape, generator=g)]
            self.store.update(p.owners.key, values)
            self._apply(rw.set_grad_rule, nodes=node, params="weight", task=t, kind="freeze", provider="owned",
                        acted=(), expect="maybe")
        else:
            key = self._fresh("mult.")
            self.store.put(key, (torch.rand(p.shape[:1] + (1,) * (len(p.shape) - 1), generator=g) > 0.5).float())
            self._apply(rw.set_grad_rule, nodes=node, params="weight", task=t, tensor=key, apply="update",
                        acted=())

    @precondition(lambda self: self.net is not None and self._on_route({"Gate"}))
    @rule(data=st.data())
    def add_task_embedding(self, data):
        pairs = self._on_route({"Gate"})
        free = [(t, n) for t, n in pairs if not any(p.task == t for p in self.net.node(n).params)]
        pick = self._pick(data, free, [x for x in pairs if x not in free], "task_gate")
        t, node = pick
        new = self._apply(rw.add_task_embedding, node=node, task=t, acted=(t,),
                          expect="change" if (t, node) in free else "error")
        if new is not None:
            own = [p for p in new.node(node).params if p.task == t]
            assert own and all(p.owner == t for p in own)

    # ---- policy and annotations ---------------------------------------------------------------

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def policy(self, data):
        which = data.draw(st.sampled_from(["freeze", "unfreeze", "set_lr_scale"]), label="which")
        task = data.draw(st.sampled_from([None, *self.net.tasks]), label="task")
        pool = sorted({n for _, n in self._on_route()})
        if self.net.policy and data.draw(st.booleans(), label="revisit"):
            pool = sorted({n for _, n in self.net.policy})  # overrides interact
        nodes = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True), label="nodes")
        arg = nodes[0] if len(nodes) == 1 and data.draw(st.booleans(), label="as_str") else nodes
        kwargs = {"nodes": arg, "task": task}
        if which == "freeze" and data.draw(st.booleans(), label="keep_owned"):
            kwargs["keep_owned"] = True
        if which == "set_lr_scale":
            kwargs["scale"] = data.draw(st.sampled_from([0.0, 0.1, 1.0, 2.5, -0.5, math.inf]), label="scale")
        fn = {"freeze": rw.freeze, "unfreeze": rw.unfreeze, "set_lr_scale": rw.set_lr_scale}[which]
        bad = which == "set_lr_scale" and not (0 <= kwargs["scale"] < math.inf)
        before = self.net
        tasks = list(before.tasks) if task is None else [task]
        # Policy never changes what a task computes: no task is "acted" on.
        new = self._apply(fn, expect="error" if bad else "maybe", **kwargs)
        if new is None:
            return
        for n in nodes:
            for u in before.tasks:
                pol = new.policy_for(u, n)
                if u in tasks and not (task is None and (u, n) in before.policy):
                    if which == "freeze":
                        assert pol.frozen
                    elif which == "unfreeze":
                        assert not pol.frozen
                    else:
                        assert pol.lr_scale == kwargs["scale"]
                elif task is not None:
                    assert pol == before.policy_for(u, n), f"{which} for {task} changed {u}'s policy"
        assert all(v != NodePolicy() for (t, _), v in new.policy.items() if t is None)

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def own_param(self, data):
        kinds = {"BatchNorm", "Conv2d", "Linear", "Head"}
        candidates = self._on_route(kinds)
        bad = self._on_route({"ReLU", "MaxPool2d", "Flatten"})
        pick = self._pick(data, candidates, bad, "task_node")
        if pick is None:
            return
        t, node = pick
        init = data.draw(st.sampled_from(["copy", "fresh"]), label="init")
        n = self.net.node(node)
        names = sorted(n.spec.params())
        if names:
            chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="params")
        else:
            chosen = ["weight"]
        ok = bool(names) and not any(p.task == t and p.name in chosen for p in n.params)
        new = self._apply(rw.own_param, node=node, task=t, params=chosen, init=init,
                          acted=() if init == "copy" else (t,), expect="change" if ok else "error")
        if new is not None:
            own = [p for p in new.node(node).params if p.task == t]
            assert {p.name for p in own} >= set(chosen)
            used = {p.key for name in chosen for row in new.params_for(t, node)[name] for p in row}
            assert used <= {p.key for p in own}
            for u in new.users(node) - {t}:
                assert not used & {p.key for rows in new.params_for(u, node).values() for row in rows for p in row}

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def annotate(self, data):
        where = data.draw(st.sampled_from(["net", "task", "node", "param"]), label="where")
        if data.draw(st.booleans(), label="new_ref"):
            key = self._fresh("importance.")
            self.store.put(key, torch.rand(3))
            self.refs.append(key)
        kind = data.draw(st.sampled_from(["value", "value", "remove", "bad"]), label="kind")
        value = {
            "value": lambda: data.draw(gen.annotation_values(self.refs), label="value"),
            "remove": lambda: None,
            "bad": lambda: data.draw(st.sampled_from([{1, 2}, torch.zeros(1), object(), {1: "a"}]), label="bad"),
        }[kind]()
        kwargs = {"key": data.draw(st.sampled_from(["imp", "note"]), label="key"), "value": value}
        if where in ("node", "param"):
            t, node = data.draw(st.sampled_from(self._on_route()), label="task_node")
            kwargs["node"] = node
            if where == "param":
                names = sorted({p.name for p in self.net.node(node).params})
                if not names:
                    kwargs["param"] = "weight"
                    self._apply(rw.annotate, expect="error", **kwargs)
                    return
                kwargs["param"] = data.draw(st.sampled_from(names), label="param")
        elif where == "task":
            kwargs["task"] = data.draw(st.sampled_from(list(self.net.tasks)), label="task")
        before = self.net
        new = self._apply(rw.annotate, expect="error" if kind == "bad" else "maybe", **kwargs)
        if new is None:
            return
        # Annotations change no topology and no route.
        assert set(new.graph.edges) == set(before.graph.edges)
        assert all(new.node(n).spec == before.node(n).spec for n in new.nodes)
        if where == "net":
            got = new.annotations.get(kwargs["key"])
        elif where == "task":
            got = new.tasks[kwargs["task"]].annotations.get(kwargs["key"])
        elif where == "node":
            got = new.node(kwargs["node"]).annotations.get(kwargs["key"])
        else:
            ps = [p for p in new.node(kwargs["node"]).params if p.name == kwargs["param"]]
            got = ps[0].annotations.get(kwargs["key"])
            assert all(p.annotations.get(kwargs["key"]) == got for p in ps)
        assert got == freeze_value(value)

    # ---- training -----------------------------------------------------------------------------

    @precondition(lambda self: self.net is not None and any(i.head for i in self.net.tasks.values()))
    @rule(data=st.data())
    def train(self, data):
        t = data.draw(st.sampled_from(self._closed()), label="task")
        steps = data.draw(st.integers(1, 2), label="steps")
        classes = self.net.node(self.net.tasks[t].head).spec.out_f
        x, y = gen.train_batch(self.bb.input_shape, classes)
        groups = param_groups(self.net, self.store, t, lr=0.05)
        before = inv.tensors_of(self.store, list(self.store))
        out_before = inv.outputs(self.net, self.store, self.x)
        if not groups:
            try:
                fit(self.net, self.store, t, [(x, y)] * steps)
            except JointNetError as e:
                assert repr(t) in str(e)
            else:  # pragma: no cover
                raise AssertionError("fit with everything frozen should raise")
            return
        version = self.net.version
        tp = train_plan(self.net, self.store, t, lr=0.05)
        protected = [(tensor, mask.clone(), tensor.detach().clone()) for tensor, mask, _ in tp.freezes]
        protected += [(tensor, (m == 0).expand_as(tensor).clone(), tensor.detach().clone())
                      for tensor, m in tp.update_mults]
        losses = fit(self.net, self.store, t, [(x, y)] * steps, lr=0.05, momentum=0.9, weight_decay=0.01)
        for tensor, mask, old in protected:
            assert torch.equal(tensor.detach()[mask], old[mask]), "a gradient rule let a protected entry move"
        assert len(losses) == steps and all(math.isfinite(v) for v in losses)
        assert self.net.version == version
        trained = {id(p) for g in groups for p in g["params"]}
        # Running statistics move only on BatchNorms not frozen for t (a frozen one keeps them).
        buffers = {p.key for n in self.net.route(t) for rows in self.net.params_for(t, n).values()
                   for row in rows for p in row if p.buffer
                   and not (self.net.policy_for(t, n).frozen and not self.net.policy_for(t, n).keep_owned)}
        changed = {k for k, v in before.items() if not torch.equal(v, self.store[k])}
        for k in changed:
            assert id(self.store[k]) in trained or k in buffers, f"training {t} changed {k}"
        out_after = inv.outputs(self.net, self.store, self.x)
        for u in out_before:
            if not changed & inv.route_keys(self.net, u):
                assert torch.equal(out_before[u], out_after[u]), f"training {t} changed {u}"

    @precondition(lambda self: self.net is not None and any(i.head for i in self.net.tasks.values()))
    @rule(data=st.data())
    def isolate_and_train(self, data):
        """Freeze for t every node of its route another task also uses; then training t (even
        through shared BatchNorms in train mode) leaves every other task bit-identical."""
        t = data.draw(st.sampled_from(self._closed()), label="task")
        shared = [n for n in self.net.route(t) if self.net.users(n) - {t}]
        if shared:
            self._apply(rw.freeze, nodes=shared, task=t, expect="maybe")
        if not param_groups(self.net, self.store, t, lr=0.05):
            return
        out_before = inv.outputs(self.net, self.store, self.x)
        classes = self.net.node(self.net.tasks[t].head).spec.out_f
        fit(self.net, self.store, t, [gen.train_batch(self.bb.input_shape, classes)] * 2, lr=0.05)
        out_after = inv.outputs(self.net, self.store, self.x)
        others = [u for u in out_before if u != t]
        inv.assert_outputs_equal(out_before, out_after, others, f"training {t} with its shared nodes frozen")

    # ---- bad input ----------------------------------------------------------------------------

    @precondition(lambda self: self.net is not None)
    @rule(data=st.data())
    def bad_call(self, data):
        net = self.net
        t, node = data.draw(st.sampled_from(self._on_route()), label="task_node")
        off = [n for n in net.nodes if n not in net.route(t)]
        closed = self._closed()
        calls = [
            (rw.clone_node, dict(node="no-such-node", task=t)),
            (rw.clone_node, dict(node=node, task="no-such-task")),
            (rw.bind, dict(task=t, to="no-such-task")),
            (rw.widen, dict(node=node, k=0, task=t)),
            (rw.set_lr_scale, dict(nodes=node, scale=-1.0, task=t)),
            (rw.clone_node, dict(node=node, task=t, colour="red")),
            (rw.clone_node, dict(task=t)),
            (rw.annotate, dict(key="k", value={3}, node=node)),
            (rw.reroute, dict(task=t, node=node, to="no-such-node")),
            (rw.remove_task, dict(task="no-such-task")),
            (rw.add_task, dict(task=t)),
        ]
        if off:
            calls.append((rw.clone_node, dict(node=data.draw(st.sampled_from(off), label="off"), task=t)))
        no_mask = [(u, n, p) for u, n, p in self._maskable() if not self.net.node(n).masks_of(u, p, "mask")]
        if no_mask:
            u, n, p = data.draw(st.sampled_from(no_mask), label="no_mask")
            calls.append((rw.commit_mask, dict(node=n, task=u, param=p)))
            calls.append((rw.release_mask, dict(node=n, task=u, param=p)))
        if closed:
            c = data.draw(st.sampled_from(closed), label="closed")
            calls.append((rw.add_node, dict(node="x-new", spec={"kind": "relu"}, inputs=["input"], task=c)))
            calls.append((rw.add_head, dict(task=c, n_classes=2)))
        fn, kwargs = data.draw(st.sampled_from(calls), label="call")
        e = inv.assert_rewrite_fails(net, fn, **kwargs)
        assert e.rewrite == fn.rewrite_name
        assert e.task == kwargs.get("task") and e.node == kwargs.get("node")

    # ---- invariants ---------------------------------------------------------------------------

    def _ref_users(self) -> dict[str, set[str]]:
        users: dict[str, set[str]] = {}
        for t, edges in self.ref_edges.items():
            users.setdefault(self.ref_input[t], set()).add(t)
            for u, v, _ in edges:
                users.setdefault(u, set()).add(t)
                users.setdefault(v, set()).add(t)
        return users

    @invariant()
    def net_is_checked(self):
        if self.net is not None:
            check(self.net)

    @invariant()
    def reference_model_agrees(self):
        if self.net is None:
            return
        net = self.net
        assert set(net.nodes) == self.ref_nodes
        assert set(net.tasks) == set(self.ref_edges)
        users = self._ref_users()
        for n in net.nodes:
            assert net.users(n) == users.get(n, set()), (n, net.users(n), users.get(n))
        for t, edges in self.ref_edges.items():
            assert inv.route_edges(net, t) == edges, t
            route = net.route(t)
            pos = {n: i for i, n in enumerate(route)}
            assert route[0] == self.ref_input[t]
            assert set(route) == {self.ref_input[t]} | {u for u, _, _ in edges} | {v for _, v, _ in edges}
            assert all(pos[u] < pos[v] for u, v, _ in edges)
            assert net.tasks[t].head == self.ref_head[t]
            if self.ref_head[t] is not None:
                assert route[-1] == self.ref_head[t]

    @invariant()
    def history_is_unchanged(self):
        if self.net is None:
            return
        versions = [v for _, v, _ in self.history]
        assert versions == sorted(set(versions))
        for net, version, structure in self.history:
            assert net.version == version and net.structure() == structure

    @invariant()
    def replays(self):
        if self.net is not None:
            inv.assert_replays(self.net)

    @invariant()
    def compiles(self):
        if self.net is None:
            return
        single = inv.outputs(self.net, self.store, self.x)
        inv.assert_param_counts(self.net, self.store)
        inv.assert_matches_reference(self.net, self.store, self.x, single)
        inv.assert_multi_matches_single(self.net, self.store, self.x, single)
        inv.assert_execution_api_matches(self.net, self.store, self.x, single)
        inv.assert_open_tasks_do_not_compile(self.net, self.store)
        if inv.HAVE_SNAPSHOT:
            inv.assert_snapshot_roundtrip(self.net, self.store, self.x, single)


def param_groups_keys(net, store, task):
    ids = {id(p) for g in param_groups(net, store, task, lr=1.0) for p in g["params"]}
    return {k for k in store if id(store[k]) in ids}


def test_random_rewrite_sequences():
    # Tiny tensors: one intra-op thread is many times faster than waking a pool on a busy CI box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run()
    finally:
        torch.set_num_threads(threads)


def _run(max_examples: int = 50):
    run_state_machine_as_test(
        JointNetMachine,
        settings=settings(
            settings.default,  # the loaded profile (tests/conftest.py), e.g. one without shrinking
            max_examples=max_examples,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# ---- regressions the state machine found (kept as plain examples) ---------------------------


def test_replay_gives_the_same_keys_for_tuple_arguments():
    net = gen.tiny_backbone("mlp").build("t1", 3)
    net = rw.add_task(net, task="t2")
    net = rw.add_node(net, node="a", spec={"kind": "linear", "out_f": 3}, inputs=("input",), task="t2")
    again = replay(net.log)
    assert again == net
    assert [p.key for p in again.node("a").params] == [p.key for p in net.node("a").params]


def test_task_policy_overrides_the_all_task_policy():
    net = gen.tiny_backbone("mlp").build("t1", 3)
    net = rw.freeze(net, nodes="fc1")  # every task
    net = rw.unfreeze(net, nodes="fc1", task="t1")
    assert not net.policy_for("t1", "fc1").frozen
    net = rw.set_lr_scale(net, nodes="fc1", scale=0.1)
    assert net.policy_for("t1", "fc1").lr_scale == 1.0  # t1's own entry wins
    again = rw.freeze(net, nodes="fc1", task="t1")
    assert again.policy_for("t1", "fc1") == attrs.evolve(net.policy[(None, "fc1")], lr_scale=1.0)
    again = rw.set_lr_scale(again, nodes="fc1", scale=0.1, task="t1")
    # Now t1's entry says what the all-task entry says: it is dropped, not kept redundant.
    assert ("t1", "fc1") not in again.policy and again.policy_for("t1", "fc1").frozen


def test_widen_through_flatten_for_the_first_task():
    net = gen.tiny_backbone("small_conv", 3, 4, 5).build("t1", 3)
    net = rw.add_head(rw.bind(rw.add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    for t in ("t1", "t2"):  # the owner sorts first or last among the users
        grown = check(rw.widen(net, node="conv2", k=2, task=t))
        assert grown.effective_spec(t, "fc1").in_f == (4 + 2) * 2 * 2


def test_a_later_task_sees_grown_channels_only_through_the_producer_that_grew_them():
    net = gen.tiny_backbone("vgg_bn", 3, 4, 5).build("t1", 3)
    net = rw.add_head(rw.bind(rw.add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    net = rw.clone_node(net, node="conv2", task="t2")  # t2: conv2.t2 -> bn2 (shared)
    net = rw.widen(net, node="conv2", k=2, task="t1")  # bn2 holds t1's group too
    net = rw.add_task(net, task="t3")
    net = rw.bind(net, task="t3", to="t2")  # through conv2.t2, which lacks the group
    assert net.effective_spec("t3", "bn2").num_features == 4
    net = rw.add_task(net, task="t4")
    net = rw.bind(net, task="t4", to="t1")  # through conv2, which holds it
    assert net.effective_spec("t4", "bn2").num_features == 6
    check(rw.add_head(rw.add_head(net, task="t3", n_classes=2), task="t4", n_classes=2))


def _rerouted_through_another_tasks_relu():
    """t1: conv1 -> relu1 -> pool1 -> conv2 -> n3 -> pool2 -> ...; n3 is t2's ReLU on conv1."""
    from jointnet import backbones

    net = backbones.build(backbones.small_conv((1, 8, 8), widths=(4, 4), hidden=6), task="t0", n_classes=2)
    net = rw.add_head(rw.bind(rw.add_task(net, task="t1"), task="t1", to="t0"), task="t1", n_classes=2)
    net = rw.route_through(rw.add_task(net, task="t2"), task="t2", like="t0", upto=["conv1"])
    net = rw.add_node(net, task="t2", node="n3", spec=net.node("relu1").spec, inputs=["conv1"])
    net = rw.widen(net, node="conv1", k=2, task="t1")
    return rw.reroute(net, task="t1", node="relu2", to="n3")


def test_widen_follows_each_tasks_own_input_through_a_shared_pass_node():
    # conv1's new channels reach n3 along t2's edge, but t1 enters n3 from conv2: they must not
    # flow on along t1's edge n3 -> pool2 to fc1 (t1's fc1 would expect columns it never gets).
    net = _rerouted_through_another_tasks_relu()
    grown = check(rw.widen(net, node="conv1", k=2, task="t1"))
    assert grown.effective_spec("t1", "conv2").in_ch == 4 + 2 + 2
    assert grown.effective_spec("t1", "fc1") == net.effective_spec("t1", "fc1")
    store = ParamStore(seed=0).realize(grown)
    from jointnet.execution import compile_net

    assert compile_net(grown, store, "t1")(torch.zeros(2, 1, 8, 8)).shape == (2, 2)


def test_widen_refuses_a_node_other_tasks_carry_the_channels_to_but_the_owner_does_not():
    # t2 goes on from n3 by its own pools into pool2, flatten1 and fc1 (shared with t1): conv1's
    # new channels reach fc1 along t2's edges while t1 feeds fc1 from a path without them.
    net = _rerouted_through_another_tasks_relu()
    spec = net.node
    net = rw.add_node(net, task="t2", node="p", spec=spec("pool1").spec, inputs=["n3"])
    net = rw.add_node(net, task="t2", node="q", spec=spec("pool1").spec, inputs=["p"])
    net = rw.reroute(net, task="t2", node="q", to="pool2")
    net = rw.add_node(net, task="t2", node="f", spec=spec("flatten1").spec, inputs=["pool2"])
    net = rw.reroute(net, task="t2", node="f", to="flatten1")
    net = rw.add_node(net, task="t2", node="l", spec=spec("fc1").spec, inputs=["flatten1"])
    net = rw.reroute(net, task="t2", node="l", to="fc1")
    with pytest.raises(RewriteError, match=r"reach 'fc1' along other tasks' edges, but task 't1' feeds it from "
                                           r"\['flatten1'\]"):
        rw.widen(net, node="conv1", k=2, task="t1")


def test_compact_refuses_to_leave_a_later_task_mis_sized():
    from jointnet import backbones

    net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    net = rw.widen(net, node="fc1", k=2, task="t1")
    gid = net.node("fc1").out_groups[-1].id
    check(rw.compact(net, group=gid, keep=[1]))  # only t1 sees the group: fine
    # t2, added later, sees the group; its head takes fc1's 10 features as plain columns
    later = rw.add_head(rw.bind(rw.add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    assert later.effective_spec("t2", "head.t2").in_f == 10
    with pytest.raises(RewriteError, match=r"compacting group .* would break task 't2' \(node 'head.t2' on the "
                                           r"route of task 't2': Head\(10->2\) expects input \(10,\), got \(9,\)\)"):
        rw.compact(later, group=gid, keep=[1])


def test_widen_multiplies_by_hw_at_a_flatten_however_often_it_is_reached():
    # conv2's new channels reach flatten1 twice: along t0's / t1's edges (relu2 -> pool2) and
    # along t2's own (n3 -> p3); each consumer behind it grows k * H * W input columns.
    from jointnet import backbones

    net = backbones.build(backbones.small_conv((1, 8, 8), widths=(4, 4), hidden=6), task="t0", n_classes=2)
    net = rw.add_head(rw.bind(rw.add_task(net, task="t1"), task="t1", to="t0"), task="t1", n_classes=2)
    net = rw.route_through(rw.add_task(net, task="t2"), task="t2", like="t0", upto=["conv2"])
    spec = net.node
    net = rw.add_node(net, task="t2", node="n3", spec=spec("relu2").spec, inputs=["conv2"])
    net = rw.add_node(net, task="t2", node="p3", spec=spec("pool2").spec, inputs=["n3"])
    net = rw.add_node(net, task="t2", node="f3", spec=spec("flatten1").spec, inputs=["p3"])
    net = rw.reroute(net, task="t2", node="f3", to="flatten1")
    net = rw.add_node(net, task="t2", node="alt", spec=spec("fc1").spec, inputs=["flatten1"])
    grown = check(rw.widen(net, node="conv2", k=2, task="t0"))
    for n in ("fc1", "alt"):
        assert grown.node(n).in_groups[-1].size == 2 * 2 * 2, n  # k x (2 x 2 after pool2)
    assert grown.effective_spec("t0", "fc1").in_f == (4 + 2) * 4
