"""PAR's fine-grained search: MDL (multinomial distribution learning) over a DARTS cell space.

PAR spec §3.7 [C] (Zheng et al., ICCV'19, as in PAR's ``mdenas_search.py``):

- The **supernet** has the expert's layout (`strategies.par_cells.build_cells`) with a
  stem multiplier of 1, no affine parameters, an extra BatchNorm(affine=False) after pooling ops,
  and on each of the 14 edges of a cell (node i reads inputs 0..i+1) all six `OPS`. It is a
  scratch `JointNet` of its own (task ``search``, its own store), never part of the run's net:
  the run's net and store are untouched by a search, and the supernet is dropped afterwards.
  Its task route sums every op of every edge (DARTS' all-ops supernet); a **path** (one op per
  edge) is a `RouteView` of it (`path_view`), compiled and trained through the core's one
  execution path (`jointnet.execution.compile_net`).
- ``p[type][edge, op]`` (normal, reduce) start uniform. The task's training set is split at
  random 50/50. Each search epoch: sample one op per edge (one draw per cell type, shared by
  every cell of the type), train that path one epoch on the first half (SGD, momentum 0.9,
  weight decay, cosine lr down to 1e-5 over the search, gradient-norm clip 5), measure its
  accuracy on the second half, and update with `mdl_update`.
- `derive_genotype`: per edge, the most probable op other than ``none``; per node, the 2 edges
  whose best op is most probable (ties: the earlier edge / op).

>>> p = torch.full((14, 6), 1 / 6)
>>> c = torch.zeros(14, 6); a = torch.zeros(14, 6)
>>> p2, c2, a2 = mdl_update(p, c, a, torch.zeros(14, dtype=torch.long), 0.5, eta=0.01)
>>> bool(torch.allclose(p2.sum(1), torch.ones(14))), c2[0].tolist(), a2[0, 0].item()
(True, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from jointnet.errors import JointNetError
from jointnet.execution.compile import compile_net
from jointnet.execution.program import Context
from jointnet.execution.store import ParamStore
from jointnet.graph import add_head, add_input, add_task
from jointnet.graph.net import JointNet, RouteView
from strategies.par_cells import N_NODES, OPS, Genotype, build_cells

__all__ = [
    "EDGES", "edge_list", "mdl_delta", "mdl_update", "sample_ops", "derive_genotype", "Supernet",
    "build_supernet", "path_view", "SearchResult", "mdl_search",
]


def edge_list(n_nodes: int = N_NODES) -> list[tuple[int, int]]:
    """The candidate edges (node, input) of a cell, in order: node i reads inputs 0..i+1.

    >>> len(edge_list()), edge_list()[:3]
    (14, [(0, 0), (0, 1), (1, 0)])
    """
    return [(i, j) for i in range(n_nodes) for j in range(2 + i)]


EDGES = edge_list()


def mdl_delta(count: torch.Tensor, lastacc: torch.Tensor) -> torch.Tensor:
    """MDL's preference step per (edge, op): the number of ops j it beats (sampled less often
    yet last accurate more: ``count_i < count_j and acc_i > acc_j``) minus the number it loses to
    (``count_i > count_j and acc_i < acc_j``). Each row sums to 0.

    >>> mdl_delta(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.9, 0.5]])).tolist()
    [[1.0, -1.0]]
    """
    ci, cj = count.unsqueeze(2), count.unsqueeze(1)
    ai, aj = lastacc.unsqueeze(2), lastacc.unsqueeze(1)
    win = ((ci < cj) & (ai > aj)).sum(2)
    lose = ((ci > cj) & (ai < aj)).sum(2)
    return (win - lose).to(count.dtype)


def mdl_update(p: torch.Tensor, count: torch.Tensor, lastacc: torch.Tensor, sampled: torch.Tensor,
               acc: float, *, eta: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One MDL step after a path was trained and scored: the sampled op of every edge gets
    ``count += 1`` and ``lastacc = acc``; then ``p = softmax(p + eta * mdl_delta)`` per edge
    (softmax of values that already are probabilities: the code's quirk, kept). Pure: returns
    new tensors ``(p, count, lastacc)``.
    """
    if p.shape != count.shape or p.shape != lastacc.shape or sampled.shape != p.shape[:1]:
        raise JointNetError(f"mdl_update: shapes {tuple(p.shape)}, {tuple(count.shape)}, {tuple(lastacc.shape)}, "
                            f"{tuple(sampled.shape)} do not fit (edges, ops) and (edges,)")
    rows = torch.arange(len(sampled))
    count = count.clone()
    lastacc = lastacc.clone()
    count[rows, sampled] += 1
    lastacc[rows, sampled] = float(acc)
    return torch.softmax(p + eta * mdl_delta(count, lastacc), dim=1), count, lastacc


def sample_ops(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One op index per edge (row), drawn from that row of `p`."""
    return torch.multinomial(p, 1, generator=gen).squeeze(1)


def _derive_cell(p: torch.Tensor, lastacc: torch.Tensor | None = None) -> list[tuple[str, int]]:
    none = OPS.index("none")
    acc = lastacc if lastacc is not None else torch.zeros_like(p)
    best = []
    for e in range(len(EDGES)):
        # Highest probability; ties (common after a short search) go to the op whose last path
        # scored best, then to the earlier op.
        ks = [k for k in range(len(OPS)) if k != none]
        k = min(ks, key=lambda k: (-float(p[e, k]), -float(acc[e, k]), k))
        best.append((float(p[e, k]), OPS[k]))
    cell: list[tuple[str, int]] = []
    for i in range(N_NODES):
        mine = [(e, j) for e, (node, j) in enumerate(EDGES) if node == i]
        top = sorted(mine, key=lambda ej: (-best[ej[0]][0], ej[1]))[:2]
        for e, j in sorted(top, key=lambda ej: ej[1]):
            cell.append((best[e][1], j))
    return cell


def derive_genotype(p_normal: torch.Tensor, p_reduce: torch.Tensor, acc_normal: torch.Tensor | None = None,
                    acc_reduce: torch.Tensor | None = None) -> Genotype:
    """The genotype of the learnt distributions (spec §3.7): per edge the best op but ``none``,
    per node the 2 edges whose best op is most probable. Ties between ops go to the higher last
    accuracy (`acc_*`, MDL's ``lastacc``; a deviation for short searches, where the code's
    argmax would pick the first op), then to the earlier op; ties between edges to the earlier.

    >>> p = torch.full((14, 6), 1 / 6); p[0, OPS.index("sep_conv_3x3")] = 0.5
    >>> derive_genotype(p, p).normal[:2]
    (('sep_conv_3x3', 0), ('max_pool_3x3', 1))
    """
    return Genotype(normal=_derive_cell(p_normal, acc_normal), reduce=_derive_cell(p_reduce, acc_reduce))


# ---- the supernet ---------------------------------------------------------------------------------


@attrs.frozen
class Supernet:
    """The supernet as a scratch net: `net` (task ``search``), and for every op chain node the
    (cell, node, edge-in-node slot) it belongs to, to cut paths out of it."""

    net: JointNet
    chain_of: dict
    n_cells: int
    reduction: frozenset


def build_supernet(input_shape: Sequence[int], n_classes: int, *, channels: int, n_cells: int,
                   stem_stride: int = 1) -> Supernet:
    """The MDL supernet for inputs of `input_shape` and a head of `n_classes` (module doc)."""
    from strategies.par_cells import reduction_cells

    net = add_input(JointNet.empty(), node="input", shape=tuple(input_shape))
    net = add_task(net, task="search")
    cells = [[[(op, j) for j in range(2 + i) for op in OPS] for i in range(N_NODES)] for _ in range(n_cells)]
    net, nodes, gap = build_cells(net, task="search", prefix="s", cells=cells, channels=channels,
                                  stem_multiplier=1, affine=False, pool_bn=True, stem_stride=stem_stride)
    net = add_head(net, task="search", n_classes=n_classes, after=gap)
    chain_of = {}
    for n in nodes:
        parts = n.split(".")  # s.cK.nI.SLOT.op...
        if len(parts) >= 5 and parts[1].startswith("c") and parts[2].startswith("n"):
            chain_of[n] = (int(parts[1][1:]), int(parts[2][1:]), int(parts[3]))
    return Supernet(net, chain_of, n_cells, reduction_cells(n_cells))


def path_view(sn: Supernet, ops_normal: Sequence[int], ops_reduce: Sequence[int], name: str = "path") -> RouteView:
    """The route of the path taking op ``ops[e]`` on edge e (normal / reduction cells)."""
    keep_slot = {}
    for k in range(sn.n_cells):
        ops = ops_reduce if k in sn.reduction else ops_normal
        for e, (i, j) in enumerate(EDGES):
            keep_slot[(k, i, j * len(OPS) + int(ops[e]))] = True

    def alive(n: str) -> bool:
        c = sn.chain_of.get(n)
        return c is None or c in keep_slot

    net = sn.net
    edges = [(u, v, d["port"]) for u, v, d in net.edges("search") if alive(u) and alive(v)]
    # Renumber the ports of the cell nodes' sums (only the kept operands remain).
    by_dst: dict[str, list] = {}
    for u, v, p in edges:
        by_dst.setdefault(v, []).append((p, u))
    out = []
    for v, ins in by_dst.items():
        for port, (_, u) in enumerate(sorted(ins)):
            out.append((u, v, port))
    return RouteView(task="search", edges=out, output=net.tasks["search"].head, name=name)


# ---- the search ---------------------------------------------------------------------------------


@attrs.frozen
class SearchResult:
    """What a search found: the genotype, the final distributions and one dict per epoch."""

    genotype: Genotype
    p_normal: torch.Tensor
    p_reduce: torch.Tensor
    history: list


def _split(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    half = max(1, n // 2)
    return order[:half], order[half:] if n > 1 else order[:half]


def mdl_search(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, *, channels: int, n_cells: int, epochs: int,
    stem_stride: int = 1,
    batch_size: int = 64, lr: float = 0.01, weight_decay: float = 3e-4, eta: float = 0.01,
    clip: float = 5.0, min_lr: float = 1e-5, seed: int = 0, device: str = "cpu",
    echo: Callable[[str], Any] | None = None,
) -> SearchResult:
    """MDL search on the training images `x`, labels `y` (module doc); deterministic for a seed
    on CPU. `epochs` 0 derives from the uniform distributions (max_pool_3x3 everywhere)."""
    if len(x) < 2:
        raise JointNetError(f"the MDL search needs at least 2 training samples (got {len(x)})")
    gen = torch.Generator().manual_seed(seed)
    sn = build_supernet(tuple(x.shape[1:]), n_classes, channels=channels, n_cells=n_cells, stem_stride=stem_stride)
    store = ParamStore(seed=seed, device=device).realize(sn.net)
    params = [t for t in store.tensors.values() if isinstance(t, torch.nn.Parameter)]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    n_ops = len(OPS)
    shape = (len(EDGES), n_ops)
    p = {kind: torch.full(shape, 1.0 / n_ops, dtype=torch.float64) for kind in ("normal", "reduce")}
    count = {kind: torch.zeros(shape, dtype=torch.float64) for kind in p}
    lastacc = {kind: torch.zeros(shape, dtype=torch.float64) for kind in p}
    a, b = _split(len(x), gen)
    history = []
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs))
        sampled = {kind: sample_ops(p[kind].float(), gen) for kind in p}
        view = path_view(sn, sampled["normal"].tolist(), sampled["reduce"].tolist(), name=f"path{epoch}")
        module = compile_net(sn.net, store, view, cache=False)
        path_params = list(module.parameters())
        train_ctx = Context(training=True)
        order = a[torch.randperm(len(a), generator=gen)]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(x[idx].to(device), train_ctx), y[idx].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(path_params, clip)
            opt.step()
        with torch.no_grad():
            correct = 0
            for i in range(0, len(b), 512):
                idx = b[i : i + 512]
                # Scored with batch statistics: one epoch on a small half leaves the running
                # statistics of a freshly sampled path unsettled (a documented choice).
                out = module(x[idx].to(device), Context(training=False, bn=True))
                correct += int((out.argmax(1).cpu() == y[idx]).sum())
        acc = correct / max(len(b), 1)
        for kind in p:
            p[kind], count[kind], lastacc[kind] = mdl_update(p[kind], count[kind], lastacc[kind], sampled[kind],
                                                             acc, eta=eta)
        history.append({"epoch": epoch, "acc": acc, "normal": [OPS[k] for k in sampled["normal"].tolist()],
                        "reduce": [OPS[k] for k in sampled["reduce"].tolist()]})
        if echo is not None:
            echo(f"search epoch {epoch + 1}/{epochs}: path accuracy {acc:.4f}")
    genotype = derive_genotype(p["normal"], p["reduce"], lastacc["normal"], lastacc["reduce"])
    return SearchResult(genotype, p["normal"], p["reduce"], history)
