"""Assertion helpers shared by the example tests and the state machine."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from jointnet.graph.check import check
from jointnet.execution.compile import compile_net
from jointnet.errors import CompileError, RewriteError
from jointnet.graph.net import JointNet
from jointnet.execution.store import ParamStore
from jointnet.graph.draft import replay

__all__ = [
    "HAVE_SNAPSHOT",
    "closed_tasks",
    "open_tasks",
    "outputs",
    "assert_outputs_equal",
    "assert_multi_matches_single",
    "assert_open_tasks_do_not_compile",
    "assert_replays",
    "assert_rewrite_fails",
    "assert_snapshot_roundtrip",
    "route_edges",
    "route_keys",
    "owned_numel",
    "assert_param_counts",
    "tensors_of",
    "reference_forward",
    "assert_matches_reference",
]

# Import guarded only by presence: when the module exists, the round trip is always checked.
HAVE_SNAPSHOT = importlib.util.find_spec("jointnet.persistence.snapshot") is not None


def closed_tasks(net: JointNet) -> list[str]:
    return [t for t, info in net.tasks.items() if info.head is not None]


def open_tasks(net: JointNet) -> list[str]:
    return [t for t, info in net.tasks.items() if info.head is None]


@torch.no_grad()
def outputs(net: JointNet, store: ParamStore, x: torch.Tensor, tasks=None) -> dict[str, torch.Tensor]:
    """Eval-mode outputs of each closed task (or of `tasks`), compiled one task at a time."""
    store.realize(net)
    out = {}
    for t in closed_tasks(net) if tasks is None else tasks:
        m = compile_net(net, store, t)
        m.eval()
        out[t] = m(x).clone()
    return out


def assert_outputs_equal(before: dict, after: dict, tasks, why: str = "") -> None:
    """Bit-identical outputs (torch.equal) for every task in `tasks`."""
    for t in tasks:
        assert t in before and t in after, f"{why}: task {t!r} missing"
        assert torch.equal(before[t], after[t]), (
            f"{why}: outputs of task {t!r} changed (max |diff| "
            f"{(before[t] - after[t]).abs().max().item() if before[t].shape == after[t].shape else 'shape'})"
        )


@torch.no_grad()
def assert_multi_matches_single(net: JointNet, store: ParamStore, x: torch.Tensor, single: dict | None = None):
    """The union compile gives bit-identical outputs to the one-task compiles."""
    closed = closed_tasks(net)
    if not closed:
        return
    single = outputs(net, store, x) if single is None else single
    m = compile_net(net, store, None if len(closed) == len(net.tasks) else closed)
    m.eval()
    multi = m(x)
    assert set(multi) == set(closed)
    for t in closed:
        assert torch.equal(multi[t], single[t]), f"multi-task compile differs from single for {t!r}"


def assert_open_tasks_do_not_compile(net: JointNet, store: ParamStore) -> None:
    for t in open_tasks(net):
        try:
            compile_net(net, store, t)
        except CompileError as e:
            assert repr(t) in str(e)
        else:  # pragma: no cover
            raise AssertionError(f"open task {t!r} compiled")


def assert_replays(net: JointNet) -> None:
    again = replay(net.log)
    assert again == net, f"replay(net.log) differs from the net at version {net.version}"
    check(again)


def assert_rewrite_fails(net: JointNet, fn, **kwargs) -> RewriteError:
    """`fn(net, **kwargs)` raises RewriteError, and `net` is left exactly as it was."""
    version, structure, log_len = net.version, net.structure(), len(net.log)
    try:
        fn(net, **kwargs)
    except RewriteError as e:
        assert net.version == version and len(net.log) == log_len
        assert net.structure() == structure, "a failed rewrite changed its input"
        return e
    raise AssertionError(f"{getattr(fn, 'rewrite_name', fn)}({kwargs}) did not raise RewriteError")


def route_edges(net: JointNet, task: str) -> set[tuple[str, str, int]]:
    return {(u, v, d["port"]) for u, v, d in net.edges(task)}


def route_keys(net: JointNet, task: str) -> set[str]:
    """Store keys of every tensor (parameters, buffers, masks) `task`'s forward pass reads."""
    keys = set()
    for n in net.route(task):
        for rows in net.params_for(task, n).values():
            keys.update(p.key for row in rows for p in row)
        keys.update(m.key for m in net.node(n).masks if m.task == task)
    return keys


def owned_numel(net: JointNet) -> int:
    """Trainable numel over every parameter of every node (each key once)."""
    seen = {}
    for n in net.nodes:
        for p in net.node(n).params:
            if not p.buffer:
                seen[p.key] = p.numel
    return sum(seen.values())


def assert_param_counts(net: JointNet, store: ParamStore | None = None) -> None:
    """Parameter counts add up: per task, the blocks it uses hold exactly the parameters of the
    layers it sees; in the store, every tensor has its Param's (or Mask's) shape."""
    for t in net.tasks:
        blocks = sum(p.numel for n in net.route(t) for rows in net.params_for(t, n).values()
                     for row in rows for p in row if not p.buffer)
        assert blocks == sum(net.effective_spec(t, n).n_params() for n in net.route(t)), t
    if store is not None:
        for n in net.nodes:
            node = net.node(n)
            for p in node.params:
                assert tuple(store[p.key].shape) == p.shape, (n, p.key)
                assert isinstance(store[p.key], torch.nn.Parameter) != p.buffer, (n, p.key)
            for m in node.masks:
                assert tuple(store[m.key].shape) == m.shape, (n, m.key)


def tensors_of(store: ParamStore, keys) -> dict[str, torch.Tensor]:
    """Detached clones of `keys` (to compare later)."""
    return {k: store[k].detach().clone() for k in keys}


@torch.no_grad()
def assert_snapshot_roundtrip(net: JointNet, store: ParamStore, x: torch.Tensor, single: dict | None = None):
    """`loads(dumps(net, store))` gives an equal net, bit-identical tensors and outputs.

    Returns the loaded (net, store).
    """
    from jointnet import snapshot

    single = outputs(net, store, x) if single is None else single
    net2, store2 = snapshot.loads(snapshot.dumps(net, store))
    assert net2 == net and net2.structure() == net.structure()
    assert net2.version == net.version and list(net2.log) == list(net.log)
    for key in store.keys_of(net):
        a, b = store[key], store2[key]
        assert a.dtype == b.dtype and torch.equal(a, b), key
        assert isinstance(b, torch.nn.Parameter) == isinstance(a, torch.nn.Parameter), key
    for t in closed_tasks(net):
        m = compile_net(net2, store2, t)
        m.eval()
        assert torch.equal(m(x), single[t]), f"outputs of {t!r} differ after the snapshot round trip"
    return net2, store2


# ---- an independent, naive interpreter of one task's route --------------------------------------


def _full_param(net: JointNet, store: ParamStore, task: str, n: str, name: str) -> torch.Tensor:
    """Parameter `name` of node `n` as `task` uses it: blocks joined, its mask applied.

    Masks cover the channels that existed when they were attached; channels grown later are
    left unmasked (multiplied by one), as `Mask` documents.
    """
    info = net.effective_spec(task, n).params()[name]
    rows = []
    for row in net.params_for(task, n)[name]:
        cells = [store[p.key].detach() for p in row]
        rows.append(torch.cat(cells, info.in_axis) if len(cells) > 1 else cells[0])
    w = torch.cat(rows, info.out_axis) if len(rows) > 1 else rows[0]
    m = net.node(n).mask(task, name)
    if m is None:
        return w
    mv = store[m.key].detach()
    if m.transform == "sigmoid":
        mv = torch.sigmoid(mv)
    elif m.transform == "hard":
        mv = (mv > 0).to(mv.dtype)
    target = {"param": w.shape, "kernel": w.shape[:2], "channel": w.shape[:1]}[m.granularity]
    full = torch.ones(tuple(target))
    full[tuple(slice(0, s) for s in mv.shape)] = mv
    return w * full.reshape(*target, *[1] * (w.dim() - len(target)))


@torch.no_grad()
def reference_forward(net: JointNet, store: ParamStore, task: str, x: torch.Tensor) -> torch.Tensor:
    """`task`'s eval-mode output computed node by node along `net.route(task)`, without the
    compiler: the oracle the compiled module is compared with."""
    vals: dict[str, torch.Tensor] = {}
    for n in net.route(task):
        spec = net.effective_spec(task, n)
        kind = spec.kind
        ins = [vals[u] for u in net.inputs_of(n, task)]
        p = {name: _full_param(net, store, task, n, name) for name in spec.params()}
        if kind == "Input":
            y = x
        elif kind in ("Linear", "Head"):
            y = F.linear(ins[0], p["weight"], p.get("bias"))
        elif kind == "Conv2d":
            y = F.conv2d(ins[0], p["weight"], p.get("bias"), spec.stride, spec.padding)
        elif kind == "BatchNorm":
            y = F.batch_norm(ins[0], p["running_mean"], p["running_var"], p["weight"], p["bias"],
                             False, spec.momentum, spec.eps)
        elif kind in ("ReLU",):
            y = F.relu(ins[0])
        elif kind in ("Identity", "Dropout"):
            y = ins[0]
        elif kind == "MaxPool2d":
            y = F.max_pool2d(ins[0], spec.kernel, spec.stride)
        elif kind == "AvgPool2d":
            y = F.avg_pool2d(ins[0], spec.kernel, spec.stride)
        elif kind == "GlobalAvgPool":
            y = ins[0].mean((2, 3))
        elif kind == "Flatten":
            y = ins[0].flatten(1)
        elif kind == "Add":
            y = ins[0]
            for other in ins[1:]:
                y = y + other
        elif kind == "Concat":
            y = torch.cat(ins, 1)
        else:  # pragma: no cover
            raise AssertionError(f"the reference interpreter does not know {kind}")
        vals[n] = y
    return vals[net.tasks[task].head]


def assert_matches_reference(net: JointNet, store: ParamStore, x: torch.Tensor, single: dict) -> None:
    """Every closed task's compiled output equals the naive interpreter's (up to rounding)."""
    for t in closed_tasks(net):
        ref = reference_forward(net, store, t, x)
        assert torch.allclose(single[t], ref, rtol=1e-5, atol=1e-6), (
            f"compiled task {t!r} differs from the reference interpreter by "
            f"{(single[t] - ref).abs().max().item()}"
        )
