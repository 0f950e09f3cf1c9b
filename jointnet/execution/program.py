"""The execution plan of a net for some routes: which node computations run, once each.

Routes are task names or `RouteView`s (paths that are not tasks: a LASEM configuration, a PAR
supernet path). A node's output is computed once and reused by every route whose computation up
to that node is the same (same node, parameters, masks, inputs and train mode): routes that agree
on a prefix share it, a trie of prefixes. With ``independent_dropout`` every route draws its own
dropout masks (each Dropout node and what follows it runs per route).

The plan is a list of `Step`s in topological order; `jointnet.execution.compile` turns it into the
straight-line code of a module. A step's expression is the node kind's own emitted code
(`jointnet.graph.layers.Layer.emit_grid`) over the parameter blocks the route uses, each
multiplied by the route task's masks on that block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from jointnet.errors import CompileError, JointNetError
from jointnet.execution.masks import RUNTIME as MASK_RUNTIME
from jointnet.execution.masks import salt
from jointnet.graph.names import is_name
from jointnet.graph.net import JointNet, RouteView

__all__ = ["Context", "Step", "Plan", "plan", "route_label", "task_context"]


def _flag_or_none(_inst, a, value) -> None:
    if value is not None and type(value) is not bool:
        raise CompileError(f"Context.{a.name} must be a bool or None; got {value!r}")


def _finite(lo: float):
    def check(_inst, a, value) -> None:
        if type(value) not in (int, float) or not math.isfinite(value) or value <= lo:
            raise CompileError(f"Context.{a.name} must be a finite number > {lo}; got {value!r}")
    return check


@attrs.frozen
class Context:
    """How one call of a compiled net runs (passed per call, never stored on modules).

    Attributes:
        training: train mode: dropout active and BatchNorm using and updating batch statistics,
            unless `dropout` / `bn` say otherwise.
        dropout: dropout active (None: as `training`).
        bn: BatchNorm in train mode (None: as `training`); a BatchNorm its task froze always
            uses running statistics.
        gate_scale: ``s`` of every Gate's ``sigmoid(s * e)`` (HAT anneals it per batch).
        tau: temperature of Gumbel masks.
        noise_seed: seeds Gumbel mask noise (per mask, per call); None: no noise (masks at their
            deterministic value).
    """

    training: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    dropout: bool | None = attrs.field(default=None, validator=_flag_or_none)
    bn: bool | None = attrs.field(default=None, validator=_flag_or_none)
    gate_scale: float = attrs.field(default=400.0, validator=_finite(0.0))
    tau: float = attrs.field(default=1.0, validator=_finite(0.0))
    noise_seed: int | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.dropout is None:
            object.__setattr__(self, "dropout", self.training)
        if self.bn is None:
            object.__setattr__(self, "bn", self.training)
        if self.noise_seed is not None and (type(self.noise_seed) is not int or self.noise_seed < 0):
            raise CompileError(f"Context.noise_seed must be an int >= 0 or None; got {self.noise_seed!r}")

    def with_training(self, training: bool) -> "Context":
        """This context in train or eval mode: `dropout` and `bn` follow it unless set apart
        (differing from `training` here: ``Context(False, dropout=True)`` keeps its dropout).

        >>> Context(False, dropout=True).with_training(False).dropout
        True
        >>> Context(False).with_training(True).dropout, Context(True, bn=False).with_training(False).bn
        (True, False)
        """
        dropout = self.dropout if self.dropout != self.training else None
        bn = self.bn if self.bn != self.training else None
        return Context(training, dropout, bn, gate_scale=self.gate_scale, tau=self.tau, noise_seed=self.noise_seed)


def task_context(net: JointNet, task: str, **overrides: Any) -> Context:
    """The context `task`'s inference runs with: its `TaskInfo.context`, then `overrides`.

    Raises:
        CompileError: the net records a field `Context` does not have.
    """
    fields = {**dict(net.tasks[task].context), **overrides}
    try:
        return Context(**fields)
    except TypeError:
        known = [a.name for a in attrs.fields(Context)]
        bad = sorted(set(fields) - set(known))
        raise CompileError(f"task {task!r} records context field(s) {bad}; Context has {known}") from None


def route_label(route: "str | RouteView") -> str:
    """The name a route's output goes under: the task, or the view's name."""
    return route.name if isinstance(route, RouteView) else route


@attrs.frozen
class Step:
    """One node computation: ``var = expr``, reading `inputs` (variables of earlier steps)."""

    var: str
    node: str
    expr: str
    inputs: tuple[str, ...]


@attrs.frozen
class Plan:
    """Steps in order, the tensors they read (attribute name -> store key, and attribute ->
    ``(packed key, shape)`` for committed masks), each route's output variable and the
    variables of captured nodes."""

    steps: tuple[Step, ...]
    tensors: tuple[tuple[str, str, str], ...]  # (attribute, store key, node)
    unpacked: tuple[tuple[str, str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, str], ...]
    captures: tuple[tuple[str, str, str], ...]  # (route label, node, var)


class _Refs:
    """Attribute names for the tensors a plan reads."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.nodes: dict[str, str] = {}
        self.taken: set[str] = {"x", "ctx"}
        self.unpacked: dict[str, tuple[str, tuple]] = {}

    def _name(self, node: str, what: str) -> str:
        base = "".join(c if c.isalnum() else "_" for c in f"{node}_{what}")
        if base[0].isdigit():
            base = "_" + base
        out, i = base, 2
        while out in self.taken:
            out = f"{base}_{i}"
            i += 1
        self.taken.add(out)
        return out

    def tensor(self, node: str, what: str, key: str) -> str:
        if key not in self.names:
            self.names[key] = self._name(node, what)
            self.nodes[key] = node
        return "self." + self.names[key]

    def bits(self, node: str, what: str, key: str, shape: tuple[int, ...]) -> str:
        if key not in self.unpacked:
            self.unpacked[key] = (self._name(node, what), tuple(shape))
        return "self." + self.unpacked[key][0]


def _mask_expr(refs: _Refs, node: str, m, block_shape: tuple[int, ...]) -> str:
    if m.state == "committed":
        e = refs.bits(node, f"bits_{m.kind}_{m.task}_{m.param}", m.key, m.shape)
    else:
        e = refs.tensor(node, f"mask_{m.kind}_{m.task}_{m.param}", m.key)
        if m.transform != "identity":
            if f"_mask_{m.transform}" not in MASK_RUNTIME:
                raise CompileError(f"node {node!r}: mask transform {m.transform!r} is not registered; "
                                   "import the code that provides it")
            e = f"_mask_{m.transform}({e}, ctx, {salt(m.key)})"
    if m.where is not None:
        w = refs.tensor(node, f"where_{m.kind}_{m.task}_{m.param}", m.where)
        e = f"torch.where({w}, {e}, torch.ones_like({e}))"
    extra = len(block_shape) - len(m.shape)
    if extra:
        e = f"{e}[{', '.join([':'] * len(m.shape) + ['None'] * extra)}]"
    return e


def _node_expr(net: JointNet, route, n: str, spec, grid, in_vars: list[str], refs: _Refs) -> str:
    node = net.node(n)
    owner = net.task_of(route)
    masks: dict[tuple, list] = {}
    for m in node.masks:
        if m.task == owner:
            masks.setdefault((m.param, m.block), []).append(m)
    infos = spec.params()
    grids = {}
    for name, rows in grid.items():
        cells_rows = []
        for row in rows:
            cells = []
            for p in row:
                e = refs.tensor(n, name, p.key)
                for m in masks.get((name, p.block), ()):
                    e = f"{e} * {_mask_expr(refs, n, m, p.shape)}"
                cells.append(e if " * " not in e else f"({e})")
            cells_rows.append(cells)
        grids[name] = cells_rows
    sizes: list[int] = []  # widths of the output channel groups, for kinds that keep them apart
    for name, rows in grid.items():
        axis = infos[name].out_axis
        if axis is not None:
            sizes = [row[0].shape[axis] for row in rows]
            break
    return spec.emit_grid(in_vars, grids, infos, sizes)


def plan(net: JointNet, routes: Sequence["str | RouteView"], capture: Sequence[str] = (),
         *, independent_dropout: bool = False) -> Plan:
    """The plan computing every route of `routes` (and the outputs of the nodes `capture`).

    Raises:
        CompileError: an unknown or open task, routes reading different inputs, a repeated
            label, a node to capture that no route computes, or a name that is not valid.
    """
    if not routes:
        raise CompileError("nothing to compile: no tasks or views")
    labels = [route_label(r) for r in routes]
    if len(set(labels)) != len(labels):
        raise CompileError(f"routes {labels} repeat a name")
    for r in routes:
        t = net.task_of(r)
        if t not in net.tasks:
            raise CompileError(f"no task {t!r}; tasks are {', '.join(net.tasks) or 'none'}")
        if isinstance(r, str) and net.tasks[t].head is None:
            raise CompileError(f"task {t!r} is open (it has no head yet)")
        if isinstance(r, RouteView):
            missing = [n for u, v, _ in r.edges for n in (u, v) if n not in net.graph._node]
            if missing:
                raise CompileError(f"view {r.name!r} of task {t!r} names missing node(s) {sorted(set(missing))}")
    inputs = {net.tasks[net.task_of(r)].input for r in routes}
    if len(inputs) != 1:
        raise CompileError(f"routes {labels} read different inputs {sorted(inputs)}; compile them apart")
    refs = _Refs()
    sig_var: dict[tuple, str] = {}
    steps: list[Step] = []
    outputs: list[tuple[str, str]] = []
    captures: list[tuple[str, str, str]] = []
    want = set(capture)
    for r, label in zip(routes, labels):
        task = net.task_of(r)
        start = net.tasks[task].input
        sigs: dict[str, tuple] = {}
        path_dropout = False
        for n in net.route(r):
            # Node ids go into the generated source as comments: only validated names may (a net
            # built by hand around the validating constructors could hold anything).
            if not is_name(n) or not is_name(task):
                raise CompileError(f"node {n!r} of task {task!r} is not a valid name; refusing to compile")
            if n == start:
                sigs[n] = ("input", n)
                sig_var[sigs[n]] = "x"
                if n in want:
                    captures.append((label, n, "x"))
                continue
            try:
                spec = net.effective_spec(r, n)
                grid = net.params_for(r, n)
            except JointNetError as e:
                raise CompileError(f"node {n!r} of route {label!r}: {e}") from None
            node = net.node(n)
            masks = tuple(sorted((m.key, m.transform, m.where) for m in node.masks if m.task == task))
            ins = tuple(sigs[u] for u in net.inputs_of(n, r))
            psig = tuple((name, tuple(tuple(p.key for p in row) for row in rows)) for name, rows in grid.items())
            # A BatchNorm frozen for the task normalises with its running statistics and never
            # updates them, even in train mode (PAR spec §10: freezing also freezes bn_mode), so
            # training a task cannot move statistics it froze and other tasks may read. With
            # keep_owned, statistics the task owns outright (its variant, or a node only it
            # uses) still update.
            pol = net.policy_for(task, n)
            frozen_bn = spec.kind == "BatchNorm" and pol.frozen and not (
                pol.keep_owned and all(
                    p.task == task or p.owner == task or (p.owner is None and net.users(n) == {task})
                    for rows in grid.values() for row in rows for p in row
                )
            )
            if independent_dropout and spec.kind == "Dropout":
                path_dropout = True
            sig = (n, spec, psig, masks, ins, frozen_bn, label if path_dropout else None)
            sigs[n] = sig
            if sig not in sig_var:
                var = f"v{len(steps) + 1}"
                sig_var[sig] = var
                in_vars = [sig_var[s] for s in ins]
                expr = _node_expr(net, r, n, spec, grid, in_vars, refs)
                if frozen_bn:
                    expr = expr.replace("ctx.bn", "False")
                steps.append(Step(var, n, expr, tuple(in_vars)))
            if n in want:
                captures.append((label, n, sig_var[sig]))
        out_node = r.output if isinstance(r, RouteView) else net.tasks[task].head
        if out_node not in sigs:
            raise CompileError(f"route {label!r} does not reach its output {out_node!r}")
        outputs.append((label, sig_var[sigs[out_node]]))
    missing = want - {n for _, n, _ in captures}
    if missing:
        raise CompileError(f"cannot capture {sorted(missing)}: no route computes them")
    return Plan(
        tuple(steps),
        tuple((attr, key, refs.nodes[key]) for key, attr in refs.names.items()),
        tuple((attr, key, shape) for key, (attr, shape) in refs.unpacked.items()),
        tuple(outputs),
        tuple(captures),
    )
