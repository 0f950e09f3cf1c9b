"""Assertion helpers shared by the example tests and the state machine."""

from __future__ import annotations

import importlib.util
import math

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
    "assert_execution_api_matches",
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
def _by_input(net: JointNet, tasks) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for t in tasks:
        groups.setdefault(net.tasks[t].input, []).append(t)
    return groups


@torch.no_grad()
def assert_multi_matches_single(net: JointNet, store: ParamStore, x: torch.Tensor, single: dict | None = None):
    """The union compile (per input) gives bit-identical outputs to the one-task compiles."""
    closed = closed_tasks(net)
    if not closed:
        return
    single = outputs(net, store, x) if single is None else single
    for tasks in _by_input(net, closed).values():
        m = compile_net(net, store, tasks)
        m.eval()
        multi = m(x)
        assert set(multi) == set(tasks)
        for t in tasks:
            assert torch.equal(multi[t], single[t]), f"multi-task compile differs from single for {t!r}"


@torch.no_grad()
def assert_execution_api_matches(net: JointNet, store: ParamStore, x: torch.Tensor, single: dict) -> None:
    """`run` (one pass over several routes, capturing nodes) gives the compiled modules' outputs,
    a task's own route as a view gives its output, and a view swapping a clone back for its
    source computes what the oracle says it does (evaluating a view logs nothing)."""
    from jointnet.execution import run
    from jointnet.errors import InvariantError

    closed = closed_tasks(net)
    for tasks in _by_input(net, closed).values():
        last = {t: net.route(t)[-2] for t in tasks if len(net.route(t)) > 2}
        out = run(net, store, x, tasks, capture=sorted(set(last.values())))
        for t in tasks:
            assert torch.equal(out.logits[t], single[t]), f"run() differs from the compiled module for {t!r}"
        for t, n in last.items():
            assert (t, n) in out.activations or any(k[1] == n for k in out.activations)
    version, log_len = net.version, len(net.log)
    for t in closed:
        view = net.view(t, name=f"{t}-own")
        m = compile_net(net, store, view)
        m.eval()
        assert torch.equal(m(x), single[t]), f"task {t!r} as a view differs"
        clones = [n for n in net.route(t) if net.node(n).cloned_from in net.graph._node]
        for c in clones[:1]:
            swapped = net.view(t, swap={c: net.node(c).cloned_from}, name=f"{t}-src")
            try:
                from jointnet.graph.shapes import task_shapes

                task_shapes(net, swapped)
            except InvariantError:
                continue  # the source has changed shape since (a widen)
            try:
                m = compile_net(net, store, swapped)
            except CompileError as e:
                # a generated conv's per-task tensors exist only for tasks routed through it
                assert "none of its own" in str(e), e
                continue
            m.eval()
            ref = reference_forward(net, store, swapped, x)
            assert torch.allclose(m(x), ref, rtol=1e-5, atol=1e-6), f"view {swapped.name} differs from the oracle"
    assert net.version == version and len(net.log) == log_len


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
                if m.state == "committed":  # packed bits
                    assert store[m.key].dtype == torch.uint8, (n, m.key)
                    assert store[m.key].numel() == (math.prod(m.shape) + 7) // 8, (n, m.key)
                else:
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


def _mask_value(store: ParamStore, m) -> torch.Tensor:
    """A mask's multiplier as the oracle computes it, without the compiler (eval: no noise)."""
    if m.state == "committed":
        from jointnet.execution.store import unpack_bits

        mv = unpack_bits(store[m.key].detach(), m.shape).float()
    else:
        mv = store[m.key].detach()
        if m.transform == "sigmoid":
            mv = torch.sigmoid(mv)
        elif m.transform in ("hard", "gumbel"):
            mv = (mv > 0).to(mv.dtype)
    if m.where is not None:
        mv = torch.where(store[m.where].bool(), mv, torch.ones_like(mv))
    return mv


def _full_param(net: JointNet, store: ParamStore, route, n: str, name: str) -> torch.Tensor:
    """Parameter `name` of node `n` as `route` uses it: each block times its task's masks on it
    (every kind), blocks joined. Blocks a mask does not cover are unmasked."""
    info = net.effective_spec(route, n).params()[name]
    task = net.task_of(route)
    masks = [m for m in net.node(n).masks if m.task == task and m.param == name]
    rows = []
    for row in net.params_for(route, n)[name]:
        cells = []
        for p in row:
            w = store[p.key].detach()
            for m in masks:
                if m.block == p.block:
                    mv = _mask_value(store, m)
                    w = w * mv.reshape(*mv.shape, *[1] * (w.dim() - mv.dim()))
            cells.append(w)
        rows.append(torch.cat(cells, info.in_axis) if len(cells) > 1 else cells[0])
    return torch.cat(rows, info.out_axis) if len(rows) > 1 else rows[0]


@torch.no_grad()
def reference_forward(net: JointNet, store: ParamStore, task, x: torch.Tensor,
                      gate_scale: float = 400.0) -> torch.Tensor:
    """The eval-mode output of `task` (a task or a route view) computed node by node along its
    route, without the compiler: the oracle the compiled module is compared with."""
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
            y = F.conv2d(ins[0], p["weight"], p.get("bias"), spec.stride, spec.padding, spec.dilation,
                         spec.groups)
        elif kind == "TFConv2d":  # W[o,i,h,w] = sum G[a,b,c,d] U4[a,o] U3[b,i] U1[c,h] U2[d,w]
            w = torch.einsum("abcd,ao,bi,ch,dw->oihw", p["core"], p["u4"], p["u3"], p["u1"], p["u2"])
            y = F.conv2d(ins[0], w, p["bias"], spec.stride, spec.padding)
        elif kind == "DFConv2d":  # Z = deconv(K) + beta (stride 2, "same"), W = Z contracted with T
            z = F.conv_transpose2d(p["kb"][None], p["deconv"], p["deconv_bias"], stride=2,
                                   padding=(spec.ts_kernel - 1) // 2)[0]
            w = torch.tensordot(z, p["contract"], dims=([0], [0])).permute(3, 2, 0, 1)
            y = F.conv2d(ins[0], w, p["bias"], spec.stride, spec.padding)
        elif kind == "BatchNorm":
            y = F.batch_norm(ins[0], p["running_mean"], p["running_var"], p.get("weight"), p.get("bias"),
                             False, spec.momentum, spec.eps)
        elif kind in ("ReLU",):
            y = F.relu(ins[0])
        elif kind in ("Identity", "Dropout"):
            y = ins[0]
        elif kind == "Zero":
            y = torch.zeros_like(ins[0][:, :, ::spec.stride, ::spec.stride] if spec.stride > 1 else ins[0])
        elif kind == "MaxPool2d":
            y = F.max_pool2d(ins[0], spec.kernel, spec.stride, spec.padding)
        elif kind == "AvgPool2d":
            y = F.avg_pool2d(ins[0], spec.kernel, spec.stride, spec.padding, count_include_pad=False)
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
        elif kind == "Gate":
            g = torch.sigmoid(gate_scale * p["embedding"])
            y = ins[0] * g.reshape(-1, *[1] * (ins[0].dim() - 2))
        else:  # pragma: no cover
            raise AssertionError(f"the reference interpreter does not know {kind}")
        vals[n] = y
    out = task.output if not isinstance(task, str) else net.tasks[task].head
    return vals[out]


def assert_matches_reference(net: JointNet, store: ParamStore, x: torch.Tensor, single: dict) -> None:
    """Every closed task's compiled output equals the naive interpreter's (up to rounding)."""
    for t in closed_tasks(net):
        ref = reference_forward(net, store, t, x)
        assert torch.allclose(single[t], ref, rtol=1e-5, atol=1e-6), (
            f"compiled task {t!r} differs from the reference interpreter by "
            f"{(single[t] - ref).abs().max().item()}"
        )
