"""L2BG on the graph: slots of a task-net, their activations, the bind-grow composite rewrite,
the grow log, the multi-task gain read from a net, and the per-node training version counter.

Slots, provenance and the grow log are described in `strategies.l2bg`'s module docstring.

**Version counter** (spec §8 node metadata ``version``): after every training phase of the
JointNet (a task's `run.train`, LwF-protected old heads included), every node whose tensors
(parameters or BatchNorm statistics) changed gets its node annotation ``l2bg.version``
incremented by one (`bump_versions`; absent = 0). An adopted ``G_1`` (``first="adopt"``) counts
as one phase for every node of its route. `node_versions` reads them. The counter is written by
`annotate` rewrites, so it is in the log: adding it changed the lineage (and so every later fresh
initial value) of L2BG runs against the runs before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from jointnet.errors import JointNetError
from jointnet.execution import run as execute
from jointnet.execution import task_context
from jointnet.execution.store import ParamStore
from jointnet.graph import add_head, add_task, annotate, bind, clone_node, freeze, set_lr_scale
from jointnet.graph.frozen import thaw
from jointnet.graph.net import JointNet
from strategies.l2bg_rsa import accuracy_gain, multitask_gain, rsa

__all__ = [
    "PROV", "VAL_ACC", "GROW_LOG", "VERSION", "SLOT_KINDS", "ACTIVATIONS", "Slot", "template_of", "task_slots",
    "slot_outputs", "slot_conflicts", "slot_params", "grown_params", "bind_grow_step", "grow_sequence", "net_gain",
    "tensor_state", "bump_versions", "node_versions", "log_entry",
]

PROV = "l2bg"  # task and grown-node provenance
VAL_ACC = "l2bg.val_acc"  # task annotation: every learned task's val accuracy after this task
GROW_LOG = "l2bg.grow_log"  # net annotation: the grow sequence
VERSION = "l2bg.version"  # node annotation: training phases that updated the node (spec §8)

SLOT_KINDS = ("Conv2d", "Linear")
ACTIVATIONS = ("ReLU", "Sigmoid", "Tanh", "GELU", "LeakyReLU", "ELU")


@attrs.frozen
class Slot:
    """One slot of a task-net: its name (template node), its parametric nodes, the node whose
    output RSA reads with ``record="post"`` and with ``record="pre"``."""

    name: str
    nodes: tuple[str, ...]
    post: str
    pre: str


def template_of(net: JointNet, node_id: str) -> str:
    """The template node `node_id` descends from (through ``cloned_from``), e.g. ``fc1``."""
    seen = set()
    n = node_id
    while n in net and n not in seen:
        seen.add(n)
        node = net.node(n)
        prov = node.annotations.get(PROV)
        if prov is not None and prov.get("template"):
            return prov["template"]
        if node.cloned_from is None or node.cloned_from not in net:
            return n
        n = node.cloned_from
    return n


def task_slots(net: JointNet, task: str, *, bn_slots: bool = True, head_slot: bool = False) -> list[Slot]:
    """The slots of `task`'s route in route order (see the module docstring).

    >>> net = backbones.build(backbones.mlp(4, [8, 8]), task="t1", n_classes=2)
    >>> [(s.name, s.nodes, s.post) for s in task_slots(net, "t1")]
    [('fc1', ('fc1',), 'relu1'), ('fc2', ('fc2',), 'relu2')]
    """
    head = net.tasks[task].head
    slots: list[dict] = []
    cur: dict | None = None
    for n in net.route(task):
        kind = net.node(n).kind
        if kind == "Input" or n == head:
            continue
        if kind in SLOT_KINDS or (kind == "BatchNorm" and (bn_slots or cur is None)):
            cur = {"nodes": [n], "segment": [n]}
            slots.append(cur)
        elif cur is not None:
            if kind == "BatchNorm":
                cur["nodes"].append(n)
            cur["segment"].append(n)
    out = []
    for s in slots:
        acts = [n for n in s["segment"] if net.node(n).kind in ACTIVATIONS]
        pre = s["nodes"][-1]
        out.append(Slot(template_of(net, s["nodes"][0]), tuple(s["nodes"]), acts[-1] if acts else pre, pre))
    if head_slot and head is not None:
        out.append(Slot("head", (head,), head, head))
    return out


@torch.no_grad()
def slot_outputs(net: JointNet, store: ParamStore, task: str, x: torch.Tensor, slots: Sequence[Slot],
                 record: str = "post") -> dict[str, torch.Tensor]:
    """The output of every slot of `task` for inputs `x`, flattened to ``n x d``, by slot name.

    One call of the public execution API (`jointnet.execution.run`) capturing the slots' nodes,
    in eval mode (`task`'s inference context with ``training=False``: dropout off, BatchNorm on
    its running statistics): the activations are exactly those of the compiled forward.

    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> store = ParamStore(seed=0).realize(net)
    >>> {k: tuple(v.shape) for k, v in slot_outputs(net, store, "t1", torch.zeros(3, 4), task_slots(net, "t1")).items()}
    {'fc1': (3, 8)}
    """
    if record not in ("post", "pre"):
        raise ValueError(f"record must be 'post' or 'pre' (got {record!r})")
    at = {s.name: (s.post if record == "post" else s.pre) for s in slots}
    ctx = task_context(net, task).with_training(False)
    acts = execute(net, store, x, task, capture=list(dict.fromkeys(at.values())), context=ctx).activations
    return {name: acts[(task, n)].reshape(len(x), -1) for name, n in at.items()}


def slot_conflicts(acts_b: Mapping[str, torch.Tensor], acts_t: Mapping[str, torch.Tensor], *,
                   rdm_kind: str = "pearson", compare: str = "spearman") -> dict[str, float]:
    """``C_{t,b}(l)``: the RSA dissimilarity of every slot (spec §2.2); same slot names required."""
    if list(acts_b) != list(acts_t):
        raise JointNetError(f"L2BG: the task-nets have different slots ({list(acts_b)} vs {list(acts_t)}); "
                            "L2BG needs every task-net to be the same template (spec §1)")
    return {s: rsa(acts_b[s], acts_t[s], rdm_kind, compare) for s in acts_b}



# ---- the composite rewrite -------------------------------------------------------------------


def bind_grow_step(
    net: JointNet, /, *, task: str, to: str, grow: Sequence[str], n_classes: int | None = None,
    init: str = "copy", head: str = "per_task", shared_lr_scale: float = 0.1, bn_slots: bool = True,
    provenance: Mapping[str, Any] | None = None, node_provenance: Mapping[str, Mapping[str, Any]] | None = None,
    delta: float | None = None,
) -> JointNet:
    """Bind `task` to `to`, add its head, grow the slots `grow`, set its train policy, annotate.

    A composite of logged primitives (spec §8 rewrite 5): `add_task`, `bind` (`task` routes
    through every node of `to`'s route), `add_head` (a new head, or ``share_with=to`` when
    `head` is ``"shared"``), one `clone_node` per node of every grown slot (ids
    ``TEMPLATE.TASK``), `set_lr_scale` (or `freeze` when `shared_lr_scale` is 0) on the nodes
    `task` shares, and `annotate` with the provenance (task, grown nodes, ``l2bg.grow_log``).
    `init` ``from_independent`` clones with fresh tensors that the caller overwrites.

    >>> net = backbones.build(backbones.mlp(4, [8, 8]), task="t1", n_classes=2)
    >>> net = bind_grow_step(net, task="t2", to="t1", grow=["fc2"], n_classes=3)
    >>> net.route("t2")
    ['input', 'fc1', 'relu1', 'fc2.t2', 'relu2', 'head.t2']
    >>> net.policy_for("t2", "fc1").lr_scale, net.policy_for("t2", "fc2.t2").lr_scale
    (0.1, 1.0)
    """
    if init not in ("copy", "fresh", "from_independent"):
        raise JointNetError(f"bind_grow_step: init must be 'copy', 'fresh' or 'from_independent' (got {init!r})")
    if head not in ("per_task", "shared"):
        raise JointNetError(f"bind_grow_step: head must be 'per_task' or 'shared' (got {head!r})")
    net = add_task(net, task=task)
    net = bind(net, task=task, to=to)
    if head == "shared":
        net = add_head(net, task=task, share_with=to, n_classes=n_classes)
    else:
        net = add_head(net, task=task, n_classes=n_classes)
    slots = {s.name: s for s in task_slots(net, task, bn_slots=bn_slots, head_slot=head == "shared")}
    unknown = [g for g in grow if g not in slots]
    if unknown:
        raise JointNetError(f"bind_grow_step(task={task!r}, to={to!r}): no slot(s) {unknown}; slots are {list(slots)}")
    node_provenance = node_provenance or {}
    grown_nodes: list[tuple[str, str, str, str]] = []  # (clone, slot, source, template)
    for g in grow:
        for n in slots[g].nodes:
            tmpl = "head" if g == "head" else template_of(net, n)
            new_id = f"{tmpl}.{task}"
            net = clone_node(net, node=n, task=task, init="copy" if init == "copy" else "fresh", new_id=new_id)
            grown_nodes.append((new_id, g, n, tmpl))
    shared = [n for n in net.route(task) if net.node(n).params and net.users(n) != frozenset({task})]
    if shared and shared_lr_scale == 0:
        net = freeze(net, nodes=shared, task=task)
    elif shared:
        net = set_lr_scale(net, nodes=shared, scale=float(shared_lr_scale), task=task)
    if provenance is not None:
        net = annotate(net, key=PROV, value=dict(provenance), task=task)
    for clone, g, src, tmpl in grown_nodes:
        info = {"task": task, "slot": g, "template": tmpl, "bound_to": to, "cloned_from": src,
                "delta": delta, "init": init, **dict(node_provenance.get(g, {}))}
        net = annotate(net, key=PROV, value=info, node=clone)
    entry = {"task": task, "bind": to, "delta": delta, "grow": list(grow)}
    return log_entry(net, entry)


def log_entry(net: JointNet, entry: dict) -> JointNet:
    old = list(thaw(net.annotations.get(GROW_LOG, ())))
    return annotate(net, key=GROW_LOG, value=old + [entry])


def grow_sequence(net: JointNet) -> list[dict]:
    """The grow sequence recorded on `net` (spec §2.7): ``[{"task", "bind", "delta", "grow"}]``.

    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> grow_sequence(bind_grow_step(net, task="t2", to="t1", grow=[], n_classes=2, delta=0.0))
    [{'task': 't2', 'bind': 't1', 'delta': 0.0, 'grow': []}]
    """
    return [dict(e) for e in thaw(net.annotations.get(GROW_LOG, ()))]


def net_gain(net: JointNet, metric: str = "error") -> float | None:
    """The multi-task gain (percent, spec §2.7) of a net L2BG built, from its annotations.

    The final validation accuracies are the last task's ``l2bg.val_acc``; the references are
    the independent nets' (``l2bg.independent.val_acc``). metric: ``error`` (the spec's
    corrected form, `multitask_gain`, reference errors floored at ``1/|V_t|``) or ``accuracy``
    (the relative *accuracy* change ``(100/T) sum_t (A_t - A_ind,t) / A_ind,t`` of Maninis et
    al., the paper's source; bounded, so one near-perfect task cannot dominate) [ours]. None
    when a reference is missing (a run without independent nets).
    """
    if metric not in ("error", "accuracy"):
        raise ValueError(f"metric must be 'error' or 'accuracy' (got {metric!r})")
    if not net.tasks:
        return None
    last = list(net.tasks)[-1]
    final = net.tasks[last].annotations.get(VAL_ACC)
    if final is None:
        return None
    accs, refs, n_val = [], [], []
    for t, info in net.tasks.items():
        prov = info.annotations.get(PROV) or {}
        ind = prov.get("independent")
        if ind is None or t not in final:
            return None
        accs.append(float(final[t]))
        refs.append(float(ind["val_acc"]))
        n_val.append(max(int(ind.get("n_val", 1)), 1))
    if metric == "accuracy":
        return accuracy_gain(accs, refs)
    return multitask_gain([1 - a for a in accs], [1 - r for r in refs], [1 / n for n in n_val])



def slot_params(net: JointNet, task: str, slots: Sequence[Slot]) -> dict[str, int]:
    """Parameters (BatchNorm statistics excluded) of each slot of `task`'s route, as `task` sees it.

    >>> net = backbones.build(backbones.mlp(4, [8, 8]), task="t1", n_classes=2)
    >>> slot_params(net, "t1", task_slots(net, "t1"))
    {'fc1': 40, 'fc2': 72}
    """
    out = {}
    for s in slots:
        n = 0
        for node in s.nodes:
            for rows in net.params_for(task, node).values():
                n += sum(p.numel for row in rows for p in row if not p.buffer)
        out[s.name] = n
    return out


def grown_params(net: JointNet) -> int:
    """Parameters of every node L2BG grew (clones carrying a node ``l2bg`` annotation; BatchNorm
    statistics excluded): the growth a parameter-matched control must match.

    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> grown_params(bind_grow_step(net, task="t2", to="t1", grow=["fc1"], n_classes=2))
    40
    """
    total = 0
    for n in net.nodes:
        node = net.node(n)
        if node.annotations.get(PROV) is not None and node.cloned_from is not None:
            total += sum(p.numel for p in node.params if not p.buffer)
    return total


def tensor_state(net: JointNet, store: ParamStore) -> dict[str, list[torch.Tensor]]:
    """Copies of every tensor (parameters and buffers) of every node of `net`, by node: what
    `bump_versions` compares after a training phase."""
    out = {}
    for n in net.nodes:
        keys = [p.key for p in net.node(n).params if p.key in store]
        if keys:
            out[n] = [store[k].detach().clone() for k in keys]
    return out


def bump_versions(net: JointNet, store: ParamStore, before: Mapping[str, Sequence[torch.Tensor]],
                  nodes: Sequence[str] | None = None) -> JointNet:
    """Increment ``l2bg.version`` of every node whose tensors differ from `before` (a
    `tensor_state` taken before the phase), or of every node in `nodes` when given.

    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> store = ParamStore(seed=0).realize(net)
    >>> before = tensor_state(net, store)
    >>> store.update(net.node("fc1").params[0].key, torch.ones(8, 4))
    >>> node_versions(bump_versions(net, store, before))
    {'fc1': 1}
    """
    if nodes is None:
        nodes = []
        for n, old in before.items():
            if n not in net:
                continue
            keys = [p.key for p in net.node(n).params if p.key in store]
            now = [store[k] for k in keys]
            if len(now) != len(old) or any(not torch.equal(a, b.to(a.device)) for a, b in zip(now, old)):
                nodes.append(n)
    for n in nodes:
        net = annotate(net, key=VERSION, value=int(net.node(n).annotations.get(VERSION, 0)) + 1, node=n)
    return net


def node_versions(net: JointNet) -> dict[str, int]:
    """``{node: version}`` for every node a training phase has updated (spec §8)."""
    return {n: int(net.node(n).annotations[VERSION]) for n in net.nodes if VERSION in net.node(n).annotations}
