"""Compile a net to an ordinary ``nn.Module`` by generating straight-line forward code.

One task: exactly its route, nothing else registered (no unused parameters). Several tasks: the
union of their routes, where a node's output is computed once and reused by every task whose
route, parameters and masks up to that node are the same. The module registers the store's own
tensors, so training it updates the store. The generated source is in ``module.code``.

>>> from jointnet import backbones
>>> from jointnet.execution.store import ParamStore
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> m = compile_net(net, ParamStore().realize(net), "t1")
>>> print(m.code.splitlines()[1].strip())
v1 = F.linear(x, self.fc1_weight, self.fc1_bias)  # fc1
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from jointnet.errors import CompileError, JointNetError
from jointnet.graph.names import is_name
from jointnet.graph.net import JointNet
from jointnet.execution.store import ParamStore

__all__ = ["compile_net", "CompiledNet"]

_CACHE_SIZE = 64


def _pad_ones(m: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Grow mask `m` to `shape` with ones (channels grown after the mask was attached)."""
    pads = []
    for have, want in reversed(list(zip(m.shape, shape))):
        pads += [0, want - have]
    return F.pad(m, pads, value=1.0)


def _bn_groups(x, sizes, means, vars_, weights, biases, training, momentum, eps):
    """BatchNorm over channel groups held in separate tensors (after `widen`): each group's
    running statistics are updated in place in its own tensor."""
    parts = x.split(sizes, 1)
    return torch.cat(
        [
            F.batch_norm(p, m, v, w, b, training, momentum, eps)
            for p, m, v, w, b in zip(parts, means, vars_, weights, biases)
        ],
        1,
    )


class CompiledNet(nn.Module):
    """A compiled task (or tasks) of a net. ``forward(x)`` returns logits, or a dict of them.

    Attributes:
        tasks: the compiled tasks; ``single`` says whether forward returns one tensor.
        code: the generated forward source.
        keys: attribute name -> store key of every registered tensor.
        gate_s: the scale ``s`` of every `Gate` node's ``sigmoid(s * e)`` (a plain float read by
            the generated code; a strategy may set it per batch, e.g. HAT's annealing).
    """

    tasks: tuple[str, ...]
    code: str
    gate_s: float = 400.0

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, version={self.net_version}"


def _attr_name(node: str, name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", f"{node}_{name}")
    if base[0].isdigit():
        base = "_" + base
    out, i = base, 2
    while out in taken:
        out = f"{base}_{i}"
        i += 1
    taken.add(out)
    return out


def compile_net(
    net: JointNet,
    store: ParamStore,
    tasks: str | Sequence[str] | None = None,
    *,
    cache: bool = True,
) -> CompiledNet:
    """Compile `tasks` of `net` (a name: one output tensor; a list or None for all: a dict).

    Raises:
        CompileError: unknown or open task, several inputs, or tensors missing from the store.
    """
    single = isinstance(tasks, str)
    names = (tasks,) if single else tuple(net.tasks if tasks is None else tasks)
    if not names:
        raise CompileError("nothing to compile: no tasks")
    key = (net.uid, names, single)
    if cache and key in store._compiled:
        return store._compiled[key]
    for t in names:
        if t not in net.tasks:
            raise CompileError(f"no task {t!r}; tasks are {', '.join(net.tasks) or 'none'}")
        if net.tasks[t].head is None:
            raise CompileError(f"task {t!r} is open (it has no head yet)")
    inputs = {net.tasks[t].input for t in names}
    if len(inputs) != 1:
        raise CompileError(f"tasks {names} read different inputs {sorted(inputs)}; compile them apart")
    module = _build(net, store, names, single)
    if cache:
        if len(store._compiled) >= _CACHE_SIZE:
            store._compiled.pop(next(iter(store._compiled)))
        store._compiled[key] = module
    return module


def _build(net: JointNet, store: ParamStore, names: tuple[str, ...], single: bool) -> CompiledNet:
    tensors: dict[str, str] = {}  # store key -> attribute name
    taken: set[str] = {"x"}
    attrs_: dict[str, torch.Tensor] = {}

    def ref(node: str, name: str, key: str) -> str:
        if key not in tensors:
            try:
                t = store.tensors[key]
            except KeyError:
                raise CompileError(f"node {node!r}: tensor {key!r} is not in the store; call store.realize(net)") from None
            tensors[key] = _attr_name(node, name, taken)
            attrs_[tensors[key]] = t
        return "self." + tensors[key]

    sig_var: dict[tuple, str] = {}
    lines: list[tuple[str, str, str, list[str]]] = []  # (var, expr, node, input vars)
    outputs: dict[str, str] = {}
    counter = 0
    for task in names:
        sigs: dict[str, tuple] = {}
        for n in net.route(task):
            # Node ids go into the generated source as comments: only validated names may (a net
            # built by hand around the validating constructors could hold anything).
            if not is_name(n) or not is_name(task):
                raise CompileError(f"node {n!r} of task {task!r} is not a valid name; refusing to compile")
            node = net.node(n)
            if node.kind == "Input":
                sigs[n] = ("input", n)
                sig_var[sigs[n]] = "x"
                continue
            grid = net.params_for(task, n)
            masks = tuple((m.key, m.granularity, m.transform) for m in node.masks if m.task == task)
            spec = net.effective_spec(task, n)
            ins = tuple(sigs[u] for u in net.inputs_of(n, task))
            psig = tuple((name, tuple(tuple(p.key for p in row) for row in rows)) for name, rows in grid.items())
            # A BatchNorm frozen for the task normalises with its running statistics and never
            # updates them, even in train mode (PAR spec §10: freezing also freezes bn_mode), so
            # training a task cannot move statistics it froze and other tasks may read.
            # With keep_owned, statistics the task owns outright (its per-task variant, or a
            # node only it uses) still update.
            pol = net.policy_for(task, n)
            frozen_bn = node.kind == "BatchNorm" and pol.frozen and not (
                pol.keep_owned and all(
                    p.task == task or p.owner == task or (p.owner is None and net.users(n) == {task})
                    for rows in grid.values() for row in rows for p in row
                )
            )
            sig = (n, spec, psig, masks, ins, frozen_bn)
            sigs[n] = sig
            if sig in sig_var:
                continue
            counter += 1
            var = f"v{counter}"
            sig_var[sig] = var
            in_vars = [sig_var[s] for s in ins]
            try:
                expr = _emit(net, task, n, spec, grid, in_vars, ref)
                if frozen_bn:
                    expr = expr.replace("self.training", "False")
            except JointNetError:
                raise
            except Exception as e:  # pragma: no cover - a bug in a spec's emit
                raise CompileError(f"while compiling node {n!r} for task {task!r}: {e}") from e
            lines.append((var, expr, n, in_vars))
        outputs[task] = sig_var[sigs[net.tasks[task].head]]
    if single:
        ret = outputs[names[0]]
    else:
        ret = "{" + ", ".join(f"{t!r}: {v}" for t, v in outputs.items()) + "}"
    # Drop each intermediate after its last use, as a hand-written forward does by reassigning
    # `x`: without it every activation of every task stays alive until return (in a multi-task
    # module that doubled the eval time from allocator and cache pressure).
    last_use = {v: i for i, (_, _, _, ins) in enumerate(lines) for v in ins}
    keep = {"x", *outputs.values()}
    body = []
    for i, (var, expr, n, ins) in enumerate(lines):
        dead = [v for v in dict.fromkeys(ins) if last_use[v] == i and v not in keep]
        free = f"; del {', '.join(dead)}" if dead else ""
        body.append(f"    {var} = {expr}{free}  # {n}")
    code = "def forward(self, x):\n" + "\n".join(body) + f"\n    return {ret}\n"
    namespace = {"torch": torch, "F": F, "_pad_ones": _pad_ones, "_bn_groups": _bn_groups}
    exec(compile(code, f"<jointnet v{net.version} {','.join(names)}>", "exec"), namespace)
    cls = type("CompiledNet", (CompiledNet,), {"forward": namespace["forward"]})
    module = cls()
    for name, t in attrs_.items():
        if isinstance(t, nn.Parameter):
            module.register_parameter(name, t)
        else:
            module.register_buffer(name, t)
    module.tasks = names
    module.single = single
    module.code = code
    module.net_version = net.version
    module.keys = {v: k for k, v in tensors.items()}
    return module


def _emit(net, task, n, spec, grid, in_vars, ref) -> str:
    node = net.node(n)
    infos = spec.params()
    if spec.kind == "BatchNorm" and len(grid["weight"]) > 1:
        lists = {
            name: "[" + ", ".join(ref(n, name, row[0].key) for row in rows) + "]"
            for name, rows in grid.items()
        }
        sizes = [row[0].shape[0] for row in grid["weight"]]
        for name in ("weight", "bias"):
            mask = node.mask(task, name)
            if mask is not None:  # mask the whole width, then hand the groups their slices
                full = lists[name].replace("[", "torch.cat([", 1) + ", 0)"
                lists[name] = f"({full} * {_mask_expr(n, mask, infos[name].shape, ref)}).split({sizes})"
        return (
            f"_bn_groups({in_vars[0]}, {sizes}, {lists['running_mean']}, {lists['running_var']}, "
            f"{lists['weight']}, {lists['bias']}, self.training, {spec.momentum!r}, {spec.eps!r})"
        )
    exprs: dict[str, str] = {}
    for name, rows in grid.items():
        info = infos[name]
        row_exprs = []
        for row in rows:
            cells = [ref(n, name, p.key) for p in row]
            row_exprs.append(cells[0] if len(cells) == 1 else f"torch.cat([{', '.join(cells)}], {info.in_axis})")
        expr = row_exprs[0] if len(row_exprs) == 1 else f"torch.cat([{', '.join(row_exprs)}], {info.out_axis})"
        mask = node.mask(task, name)
        if mask is not None:
            expr = f"({expr} * {_mask_expr(n, mask, info.shape, ref)})"
        exprs[name] = expr
    return spec.emit(in_vars, exprs)


def _mask_expr(n, mask, shape, ref) -> str:
    m = ref(n, f"mask_{mask.task}_{mask.param}", mask.key)
    if mask.transform == "sigmoid":
        m = f"torch.sigmoid({m})"
    elif mask.transform == "hard":
        m = f"({m} > 0).to({m}.dtype)"
    target = {"param": shape, "kernel": shape[:2], "channel": shape[:1]}[mask.granularity]
    if tuple(target) != tuple(mask.shape):
        m = f"_pad_ones({m}, {tuple(target)})"
    extra = len(shape) - len(target)
    if extra:
        m = f"{m}[{', '.join([':'] * len(target) + ['None'] * extra)}]"
    return m
