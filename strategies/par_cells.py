"""PAR's experts as graphs: DARTS-style cells, the genotype value, and the expert rewrites.

PAR spec §3.5 / §3.7 / §10. An *expert* is a sub-DAG of ordinary nodes under the net's input:

    stem (Conv3x3 -> BN) -> cell 0 -> ... -> cell L-1 -> GlobalAvgPool -> one head per task

Cell ``k`` reads the outputs of the two previous layers (``s0 = out[k-2]``, ``s1 = out[k-1]``; both
the stem for the first cell), so the DAG has skip edges ``cell[k-2] -> cell[k]``. Inside a cell:
``s0`` is preprocessed by ReLU-Conv1x1-BN (a stride-2 reduce after a reduction cell), ``s1`` by
ReLU-Conv1x1-BN; intermediate node ``n_i`` (i = 0..3) is an `Add` of its operations, each
operation a small chain of nodes reading input ``j`` (0, 1: the preprocessed cell inputs; 2 + m:
node ``n_m``); the cell's output is the `Concat` of ``n_0..n_3`` (4C channels). Cells at indices
``L // 3`` and ``2L // 3`` are reduction cells (stride 2 on the operations that read the cell
inputs). The channel count is not doubled at reduction cells, as in the authors' code ([C]).
Ports are explicit: `add_node` takes the operands of Add and Concat in order.

The six operations (`OPS`), as node chains (``affine`` False in the supernet):

=============== ==========================================================================
none            `Zero` (with the edge's stride)
max_pool_3x3    MaxPool2d(3, stride, padding 1) [+ BatchNorm(affine=False) in the supernet]
avg_pool_3x3    AvgPool2d(3, stride, padding 1, count_include_pad=False) [+ BN in the supernet]
skip_connect    `Identity` (stride 1) or the reduce below (stride 2)
sep_conv_3x3    ReLU, depthwise 3x3 (stride), pointwise 1x1, BN, ReLU, depthwise 3x3, pointwise, BN
dil_conv_3x3    ReLU, depthwise 3x3 dilation 2 (stride, padding 2), pointwise 1x1, BN
=============== ==========================================================================

Deviation (documented): DARTS' FactorizedReduce concatenates two stride-2 1x1 convolutions, one
on the input shifted by a pixel; the core has no crop layer, so the reduce here is ReLU ->
Conv1x1(stride 2) -> BN, which keeps every size (odd ones too) equal to the stride-2 ops'.

Composite rewrites (plain functions over logged primitives, so ``jointnet log`` shows every
`add_task`, `add_node`, `bind`, `add_head`, `annotate`): `add_expert`, `clone_expert_architecture`
(the beta path: same genotype, fresh weights), `share_expert` (the alpha path: the task joins an
expert and gets its own head). The expert registry is the net annotation ``par.experts``
(expert id -> genotype, sizes, nodes, tasks), written only by these functions.

>>> net = add_expert(JointNet.empty(), task="t1", expert="e1", genotype=DARTS_V2, n_classes=2,
...                  channels=4, n_cells=2, input_shape=(1, 8, 8))
>>> net = share_expert(net, task="t2", expert="e1", n_classes=3)
>>> experts(net)["e1"]["tasks"], net.route("t2")[-2:]
(['t1', 't2'], ['e1.gap', 'head.t2'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from jointnet.errors import JointNetError
from jointnet.graph import add_head, add_input, add_node, add_task, annotate, bind
from jointnet.graph.frozen import thaw
from jointnet.graph.net import JointNet

__all__ = [
    "OPS", "N_NODES", "Genotype", "DARTS_V2", "EXPERTS", "experts", "expert_of", "reduction_cells",
    "add_expert", "clone_expert_architecture", "share_expert", "build_cells", "expert_nodes",
]

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
N_NODES = 4  # intermediate nodes per cell (PAR spec §3.7: a 7-node cell DAG)
EXPERTS = "par.experts"  # net annotation: expert id -> record


def _pairs(value: Any) -> tuple[tuple[str, int], ...]:
    try:
        return tuple((str(op), int(src)) for op, src in value)
    except (TypeError, ValueError):
        raise ValueError(f"a cell must be a list of (op, input) pairs (got {value!r:.80})") from None


def _check_cell(_inst, a: attrs.Attribute, cell: tuple[tuple[str, int], ...]) -> None:
    if len(cell) != 2 * N_NODES:
        raise ValueError(f"Genotype.{a.name} needs {2 * N_NODES} (op, input) pairs, 2 per node (got {len(cell)})")
    for k, (op, src) in enumerate(cell):
        node = k // 2
        if op not in OPS:
            raise ValueError(f"Genotype.{a.name}[{k}]: unknown op {op!r}; ops are {', '.join(OPS)}")
        if not 0 <= src < 2 + node:
            raise ValueError(f"Genotype.{a.name}[{k}]: node {node} can read inputs 0..{node + 1} (got {src})")


@attrs.frozen
class Genotype:
    """A DARTS cell pair: for each of the 4 intermediate nodes, 2 (op, input) pairs, for the normal
    and the reduction cell. Input 0 / 1 are the two cell inputs, 2 + m is node m; the cell's
    output concatenates every intermediate node (PAR spec §3.5).

    >>> g = Genotype(normal=[("skip_connect", 0), ("sep_conv_3x3", 1)] * 4, reduce=DARTS_V2.reduce)
    >>> Genotype.from_dict(g.to_dict()) == g
    True
    """

    normal: tuple[tuple[str, int], ...] = attrs.field(converter=_pairs, validator=_check_cell)
    reduce: tuple[tuple[str, int], ...] = attrs.field(converter=_pairs, validator=_check_cell)

    def to_dict(self) -> dict:
        """Plain data (for annotations and snapshots)."""
        return {"normal": [list(p) for p in self.normal], "reduce": [list(p) for p in self.reduce]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Genotype":
        """The genotype `to_dict` wrote (lists or tuples)."""
        data = thaw(data)
        return cls(normal=data["normal"], reduce=data["reduce"])

    def cell(self, reduction: bool) -> tuple[tuple[str, int], ...]:
        return self.reduce if reduction else self.normal

    def short(self) -> str:
        """One line: ``normal: op<src op<src | ... ; reduce: ...``."""
        def side(cell):
            return " | ".join(f"{a}<{i} {b}<{j}" for (a, i), (b, j) in zip(cell[::2], cell[1::2]))
        return f"normal: {side(self.normal)}; reduce: {side(self.reduce)}"


# DARTS (second order) as published by Liu et al., ICLR 2019; it uses no 5x5 op, so it lives in
# PAR's search space. PAR's degraded mode (Table 5 #5, spec §9) trains experts of this cell.
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
)


def reduction_cells(n_cells: int) -> frozenset[int]:
    """Indices of the reduction cells: ``L // 3`` and ``2L // 3`` ([C]).

    >>> sorted(reduction_cells(4)), sorted(reduction_cells(3)), sorted(reduction_cells(2))
    ([1, 2], [1, 2], [0, 1])
    """
    return frozenset({n_cells // 3, 2 * n_cells // 3})


# ---- node chains -------------------------------------------------------------------------------


class _Builder:
    """Adds nodes for one task, remembering every id (the expert's node list)."""

    def __init__(self, net: JointNet, task: str):
        self.net, self.task, self.nodes = net, task, []

    def add(self, node: str, spec: dict, inputs: Sequence[str]) -> str:
        self.net = add_node(self.net, node=node, spec=spec, inputs=list(inputs), task=self.task)
        self.nodes.append(node)
        return node

    def relu_conv_bn(self, name: str, x: str, c: int, stride: int, affine: bool) -> str:
        x = self.add(f"{name}.relu", {"kind": "relu"}, [x])
        x = self.add(f"{name}.conv", {"kind": "conv", "out_ch": c, "kernel": 1, "stride": stride, "bias": False}, [x])
        return self.add(f"{name}.bn", {"kind": "bn", "affine": affine}, [x])

    def op(self, name: str, op: str, x: str, c: int, stride: int, affine: bool, pool_bn: bool) -> str:
        """The node chain of operation `op` reading `x`; returns its last node."""
        if op == "none":
            return self.add(f"{name}.zero", {"kind": "zero", "stride": stride}, [x])
        if op in ("max_pool_3x3", "avg_pool_3x3"):
            kind = "maxpool" if op == "max_pool_3x3" else "avgpool"
            y = self.add(f"{name}.pool", {"kind": kind, "kernel": 3, "stride": stride, "padding": 1}, [x])
            return self.add(f"{name}.bn", {"kind": "bn", "affine": False}, [y]) if pool_bn else y
        if op == "skip_connect":
            if stride == 1:
                return self.add(f"{name}.id", {"kind": "identity"}, [x])
            return self.relu_conv_bn(f"{name}.fr", x, c, stride, affine)
        if op == "sep_conv_3x3":
            for half, s in (("a", stride), ("b", 1)):
                x = self.add(f"{name}.{half}.relu", {"kind": "relu"}, [x])
                x = self.add(f"{name}.{half}.dw", {"kind": "conv", "out_ch": c, "kernel": 3, "stride": s,
                                                  "padding": 1, "groups": c, "bias": False}, [x])
                x = self.add(f"{name}.{half}.pw", {"kind": "conv", "out_ch": c, "kernel": 1, "bias": False}, [x])
                x = self.add(f"{name}.{half}.bn", {"kind": "bn", "affine": affine}, [x])
            return x
        if op == "dil_conv_3x3":
            x = self.add(f"{name}.relu", {"kind": "relu"}, [x])
            x = self.add(f"{name}.dw", {"kind": "conv", "out_ch": c, "kernel": 3, "stride": stride, "padding": 2,
                                        "dilation": 2, "groups": c, "bias": False}, [x])
            x = self.add(f"{name}.pw", {"kind": "conv", "out_ch": c, "kernel": 1, "bias": False}, [x])
            return self.add(f"{name}.bn", {"kind": "bn", "affine": affine}, [x])
        raise JointNetError(f"unknown cell op {op!r}; ops are {', '.join(OPS)}")


def build_cells(
    net: JointNet, *, task: str, prefix: str, cells: Sequence[Sequence[Sequence[tuple[str, int]]]],
    channels: int, stem_multiplier: int, affine: bool = True, pool_bn: bool = False, stem_stride: int = 1,
) -> tuple[JointNet, list[str], str]:
    """Add stem, cells and global pooling for the open `task`, reading its input.

    `cells[k][i]` lists the (op, input) operations summed by node i of cell k (2 per node for a
    genotype, every candidate for a supernet); which cells reduce follows `reduction_cells`.
    Returns the net, the ids added (in order) and the pooling node. Ids start with ``prefix.``.
    `stem_stride` 2 halves the resolution at the stem (a CPU economy; the code's stem keeps it).
    """
    b = _Builder(net, task)
    c = channels
    src = net.tasks[task].input
    stem = b.add(f"{prefix}.stem", {"kind": "conv", "out_ch": stem_multiplier * c, "kernel": 3, "padding": 1,
                                   "stride": stem_stride, "bias": False}, [src])
    stem = b.add(f"{prefix}.stem.bn", {"kind": "bn", "affine": affine}, [stem])
    red = reduction_cells(len(cells))
    s0 = s1 = stem
    reduction_prev = False
    for k, nodes in enumerate(cells):
        name = f"{prefix}.c{k}"
        reduction = k in red
        p0 = b.relu_conv_bn(f"{name}.p0", s0, c, 2 if reduction_prev else 1, affine)
        p1 = b.relu_conv_bn(f"{name}.p1", s1, c, 1, affine)
        states = [p0, p1]
        for i, ops in enumerate(nodes):
            outs = []
            for e, (op, j) in enumerate(ops):
                stride = 2 if reduction and j < 2 else 1
                outs.append(b.op(f"{name}.n{i}.{e}.{op}", op, states[j], c, stride, affine, pool_bn))
            states.append(b.add(f"{name}.n{i}", {"kind": "add"}, outs) if len(outs) > 1 else outs[0])
        out = b.add(f"{name}.out", {"kind": "concat"}, states[2:])
        s0, s1 = s1, out
        reduction_prev = reduction
    gap = b.add(f"{prefix}.gap", {"kind": "gap"}, [s1])
    return b.net, b.nodes, gap


def _genotype_cells(genotype: Genotype, n_cells: int) -> list[list[list[tuple[str, int]]]]:
    red = reduction_cells(n_cells)
    out = []
    for k in range(n_cells):
        cell = genotype.cell(k in red)
        out.append([[cell[2 * i], cell[2 * i + 1]] for i in range(N_NODES)])
    return out


# ---- the expert registry and the composite rewrites ------------------------------------------------


def experts(net: JointNet) -> dict[str, dict]:
    """The expert registry (``par.experts``): expert id -> plain record (genotype, channels, cells,
    stem_multiplier, nodes, tasks, cloned_from)."""
    return thaw(net.annotations.get(EXPERTS, {}))


def expert_of(net: JointNet, task: str) -> str:
    """The expert `task` routes through."""
    for eid, rec in experts(net).items():
        if task in rec["tasks"]:
            return eid
    raise JointNetError(f"task {task!r} uses no PAR expert")


def expert_nodes(net: JointNet, expert: str) -> list[str]:
    """The node ids of `expert` (its stem, cells and pooling; heads are the tasks')."""
    return list(experts(net)[expert]["nodes"])


def _register(net: JointNet, expert: str, record: dict) -> JointNet:
    table = experts(net)
    table[expert] = record
    return annotate(net, key=EXPERTS, value=table)


def add_expert(
    net: JointNet, /, *, task: str, expert: str, genotype: Genotype, n_classes: int, channels: int,
    n_cells: int, stem_multiplier: int = 3, stem_stride: int = 1, input_shape: Sequence[int] | None = None,
    cloned_from: str | None = None,
) -> JointNet:
    """Add `task` with a new expert `expert` of `genotype` (fresh weights) and its own head.

    A composite of logged primitives: `add_input` (on an empty net, with `input_shape`),
    `add_task`, one `add_node` per stem / cell / pooling node (ids ``EXPERT.*``), `add_head`, and
    `annotate` of the registry ``par.experts``.

    Raises:
        JointNetError: an expert id that exists, or bad sizes.
    """
    if not isinstance(genotype, Genotype):
        raise JointNetError(f"add_expert(task={task!r}): genotype must be a Genotype (got {type(genotype).__name__})")
    if expert in experts(net):
        raise JointNetError(f"add_expert(task={task!r}): expert {expert!r} exists")
    for name, v in (("channels", channels), ("n_cells", n_cells), ("stem_multiplier", stem_multiplier),
                    ("stem_stride", stem_stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise JointNetError(f"add_expert(task={task!r}): {name} must be an int >= 1 (got {v!r})")
    if "input" not in net:
        if input_shape is None:
            raise JointNetError(f"add_expert(task={task!r}): an empty net needs input_shape")
        net = add_input(net, node="input", shape=tuple(input_shape))
    net = add_task(net, task=task)
    net, nodes, gap = build_cells(net, task=task, prefix=expert, cells=_genotype_cells(genotype, n_cells),
                                  channels=channels, stem_multiplier=stem_multiplier, stem_stride=stem_stride)
    net = add_head(net, task=task, n_classes=n_classes, after=gap)
    return _register(net, expert, {
        "genotype": genotype.to_dict(), "channels": channels, "cells": n_cells,
        "stem_multiplier": stem_multiplier, "stem_stride": stem_stride, "nodes": nodes, "output": gap, "tasks": [task],
        "cloned_from": cloned_from,
    })


def clone_expert_architecture(net: JointNet, /, *, task: str, expert: str, new_expert: str,
                              n_classes: int) -> JointNet:
    """Add `task` with a new expert `new_expert` built like `expert` (its genotype and sizes) with
    fresh weights: PAR's "reuse the cell" (spec §3.5, §8.7: architecture only)."""
    table = experts(net)
    if expert not in table:
        raise JointNetError(f"clone_expert_architecture(task={task!r}): no expert {expert!r}; "
                            f"experts are {', '.join(table) or 'none'}")
    rec = table[expert]
    return add_expert(net, task=task, expert=new_expert, genotype=Genotype.from_dict(rec["genotype"]),
                      n_classes=n_classes, channels=rec["channels"], n_cells=rec["cells"],
                      stem_multiplier=rec["stem_multiplier"], stem_stride=rec.get("stem_stride", 1),
                      cloned_from=expert)


def share_expert(net: JointNet, /, *, task: str, expert: str, n_classes: int) -> JointNet:
    """Add `task` routed through every node of `expert`, with its own new head (PAR's
    regularization path): `add_task`, `bind` to the expert's first task, `add_head`, `annotate`.
    No parameter is added but the head's; every old task's route is unchanged."""
    table = experts(net)
    if expert not in table:
        raise JointNetError(f"share_expert(task={task!r}): no expert {expert!r}; "
                            f"experts are {', '.join(table) or 'none'}")
    rec = table[expert]
    net = add_task(net, task=task)
    net = bind(net, task=task, to=rec["tasks"][0])
    net = add_head(net, task=task, n_classes=n_classes, after=rec["output"])
    rec = dict(rec, tasks=list(rec["tasks"]) + [task])
    return _register(net, expert, rec)
