"""L2BG, "Learn to Bind and Grow Neural Structures" (anonymous draft; spec `specs/L2BG.md`).

Every task-net is the same backbone template, a chain of *slots* (spec §1). A new task `t`:

1. trains its **independent net** ``G_t^⊥`` in a scratch net and store
   (`jointnet.experiments.strategy.scratch_net`), never in the JointNet (spec §8 rewrite 1);
2. runs a sample of its validation inputs through the *live* task-net of every earlier task
   ``b'`` and through ``G_t^⊥``, captures every slot's output with the one execution API
   (`jointnet.execution.run`, eval mode, the task's inference context), and scores each slot
   with the RSA dissimilarity ``rho`` of the two activation sets (`rsa`, spec §2.2);
3. **binds** to ``b = argmin_b' ||C_{t,b'}||`` (`task_conflict`, `rsa_decision`, spec §2.3);
4. **grows** the *nucleus* of the normalised conflicts of ``b`` for its grow coefficient
   ``delta_t``: the smallest top-ranked prefix whose mass reaches ``delta_t`` (`normalise`,
   `nucleus`, spec §2.4); each grown slot is a `clone_node` of ``b``'s node for ``t``;
5. adds its head and trains: nodes only ``t`` uses at ``lr``, nodes it shares at
   ``shared_lr_scale * lr`` (spec §2.5); then records every learned task's validation accuracy
   (Algorithm 1 line 10).

Steps 3-4 are `bind_grow_step`, a composite of logged primitives (`add_task`, `bind`,
`add_head`, `clone_node`, `set_lr_scale` / `freeze`, `annotate`), so ``jointnet log`` shows each
of them. The decisions are pure functions tested with properties: `rdm`, `rsa`,
`task_conflict`, `normalise`, `nucleus`, `multitask_gain`, and the two decision rules
`rsa_decision` (L2BG) and `random_decision` (the ablation), each a function of a `Situation`
returning a `Choice`. `bind_grow_task` is the imperative shell both strategies' ``step`` call
with their rule.

**Slots.** A slot is one weight layer (Conv2d or Linear) with what follows it up to the next
slot: its activation, pooling, flatten. With ``bn_slots=True`` every BatchNorm is a slot of its
own (spec §2.4: the MLT experiment grew separate BN layers); with False a BatchNorm belongs to
the slot of the weight layer before it and is grown with it. A slot's output is the output of
the last activation in it (``record="post"``, spec §2.2), or of its last parametric node
(``record="pre"``, spec §7.2). A slot is named after its *template node*, the node of the first
task-net it descends from through ``cloned_from`` (``fc2`` for ``fc2``, ``fc2.t3``, ...): that
name is the bijection between task-nets (spec §1). Per-task heads are never slots (spec §7.6);
a shared head (``head="shared"``) is the last slot, named ``head``, and can be grown.

**Provenance** (spec §8 node metadata) is data on the net, so ``jointnet inspect`` and
``jointnet log`` show why each layer was grown:

- task annotation ``l2bg``: ``bound_to``, ``argmin`` (the RSA choice, which a given sequence
  may override), ``delta``, ``conflicts`` (``{b': {"slots": {slot: rho}, "norm": CC}}``),
  ``slots`` (per slot of the bound route: ``slot``, ``node``, ``conflict``, ``prob``, ``rank``,
  ``in_nucleus``, ``grown``), ``nucleus`` and ``grown`` (slot names), ``independent``
  (``G_t^⊥``'s ``val_acc``, ``test_acc``, ``n_val``), ``first`` (``fresh`` / ``adopt``, first task only);
- task annotation ``l2bg.val_acc``: every learned task's validation accuracy after training `t`;
- node annotation ``l2bg`` on every grown node: ``task``, ``slot``, ``template``,
  ``bound_to``, ``cloned_from``, ``conflict``, ``prob``, ``rank``, ``delta``, ``in_nucleus``, ``init``;
- net annotation ``l2bg.grow_log``: the grow sequence, one ``{"task", "bind", "delta", "grow"}``
  per task (spec §2.7, §8 graph metadata); `grow_sequence` reads it, `replay_sequence` in
  `strategies.l2bg_search` rebuilds the net from it.

Options of `L2BG` (defaults first; the spec section of each open choice in brackets; every
option is validated when the strategy is made):

- ``backbone``: the template (default: `jointnet.experiments.strategy.default_backbone`).
- ``delta`` = 0.55: grow coefficient in [0, 1]; a float for every task or a list with one entry
  per bind-grow step (task 2, 3, ...; the last entry repeats). [§2.4; 0.55 is the paper's
  "balanced" Pareto solution, §5 — the paper fixes no default.]
- ``rdm`` = ``"pearson"`` | ``"euclidean"``; ``compare`` = ``"spearman"`` | ``"pearson"``:
  the RSA variant [§2.2, §7.2].
- ``rsa_samples`` = 200: validation inputs per RSA [§7.2: 100-500 on CPU].
- ``record`` = ``"post"`` | ``"pre"``: which output of a slot RSA compares [§2.2, §7.2].
- ``norm`` = ``"l2"`` | ``"l1"`` | ``"mean"``: the task-level conflict norm [§2.3].
- ``normalise`` = ``"plain"`` | ``"softmax"``, ``temperature`` = 1.0 [§2.4].
- ``tol`` = 1e-9: the nucleus takes mass ``>= delta - tol`` [§2.4]; ``delta >= 1 - tol``
  grows every slot, ``delta = 0`` none [§2.4 edge cases].
- ``init`` = ``"copy"`` | ``"fresh"`` | ``"from_independent"``: a grown slot starts from the
  bound task's tensors, a fresh initialisation, or ``G_t^⊥``'s tensors of that slot [§2.4, §7.4].
- ``head`` = ``"per_task"`` | ``"shared"``: a new head per task, or one softmax shared by all
  tasks (the paper's permuted-MNIST setting; every task must then have the same number of
  classes) [§1, §2.3, §7.6].
- ``shared_lr_scale`` = 0.1: learning-rate factor of the nodes the new task shares with earlier
  tasks; 0 freezes them (the frozen baseline; BatchNorm statistics freeze too), 1 is plain
  fine-tuning [§2.5, §6, §7.5].
- ``bn_slots`` = True: BatchNorm layers are slots of their own [§2.4, §7.2].
- ``first`` = ``"fresh"`` | ``"adopt"``: the first task gets a fresh task-net trained like any
  other, or adopts its trained ``G_1^⊥`` (no second training) [§2.3, §7.7].
- ``candidates`` = None: the bind candidates ``B`` (task names); None = every earlier task
  [§2.3]. A task with no learned candidate is an error [§7.7].
- ``sequence`` = None: a fixed grow sequence overriding the RSA argmin and ``delta``: a list of
  dicts with optional keys ``bind`` (task name), ``delta`` (float) and ``grow`` (slot names, which
  then replace the nucleus). Entries with a ``task`` key apply to that task; entries without one
  apply to the bind-grow steps in order (the second task first) [§2.7].
- ``reference`` = True: train ``G_t^⊥`` even when no decision needs it (first task), so the
  multi-task gain has its reference [§2.7, §7.8].
- ``independent_config`` = None: `TrainConfig` fields overriding the run's for ``G_t^⊥``.
- ``cache_dir`` = None: a directory where trained independent nets are kept as snapshots, keyed
  by a digest of the task data, template, seed and config, so that search trials (and parallel
  workers) train each one once. ``G_t^⊥`` does not depend on the grow sequence [§7.9].

The multi-task gain (`multitask_gain`, `net_gain`) is the spec's corrected form [§2.7]:
``Delta = (100/|T|) sum_t (E_ind,t - E_t) / E_ind,t`` in percent, positive when the JointNet's
validation errors are lower than the independent nets'. ``E_ind,t`` is floored at ``1/|V_t|``
(the smallest error the validation set can measure) so a perfect independent net does not
divide by zero [ours]. Relative errors explode when an independent net is nearly perfect (easy
two-class tasks), so `net_gain` also offers ``metric="accuracy"``, the relative accuracy change
of Maninis et al. (the formula the paper adapts) [ours].

`l2bg-random` (`RandomGrowth`) is the paper's ablation (§5): the same options and the same
shell with another decision rule, `random_decision`: a random bind target, a random number of
slots, random slots, seeded by (run seed, task index); ``n_grow`` fixes the number (an int, or a
list per bind-grow step). It trains no independent net unless ``reference`` (default False
here) or ``init="from_independent"`` or ``first="adopt"`` asks; with one, the RSA conflicts are
still measured and recorded as provenance (``in_nucleus`` is then None unless a sequence entry
gives a ``delta``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from jointnet import backbones
from jointnet.errors import JointNetError
from jointnet.execution import run as execute
from jointnet.execution import task_context
from jointnet.execution.store import ParamStore
from jointnet.experiments.strategy import TaskRun, backbone_option, default_backbone, per_task, scratch_net
from jointnet.experiments.trainer import TrainConfig
from jointnet.graph import add_head, add_task, annotate, bind, clone_node, freeze, set_lr_scale
from jointnet.graph.frozen import thaw
from jointnet.graph.net import JointNet

__all__ = [
    "PROV", "VAL_ACC", "GROW_LOG", "Slot", "Situation", "Choice", "IndependentNet", "BindGrowOptions",
    "L2BG", "RandomGrowth", "rdm", "rsa", "task_conflict", "normalise", "ranking", "nucleus",
    "rsa_argmin", "rsa_decision", "random_decision", "rsa_sample", "sequence_entry",
    "needs_independent", "independent_net", "template_of", "task_slots", "slot_outputs",
    "slot_conflicts", "bind_grow_step", "bind_grow_task", "grow_sequence", "net_gain",
    "multitask_gain", "accuracy_gain",
]

PROV = "l2bg"  # task and grown-node provenance
VAL_ACC = "l2bg.val_acc"  # task annotation: every learned task's val accuracy after this task
GROW_LOG = "l2bg.grow_log"  # net annotation: the grow sequence

SLOT_KINDS = ("Conv2d", "Linear")
ACTIVATIONS = ("ReLU", "Sigmoid", "Tanh", "GELU", "LeakyReLU", "ELU")


# ---- pure decision functions -----------------------------------------------------------------


def _flat(a: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a)
    return a.detach().reshape(a.shape[0], -1).to(torch.float64)


def rdm(acts: torch.Tensor, kind: str = "pearson") -> torch.Tensor:
    """The representational dissimilarity matrix (n x n) of `acts` (n samples, any shape).

    kind: ``pearson`` (``1 - corr(A_i, A_j)``; a constant row correlates 0 with everything,
    dissimilarity 1) or ``euclidean`` (``||A_i - A_j||``). The diagonal is 0.

    >>> rdm(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])).round(decimals=6).tolist()
    [[0.0, 2.0], [2.0, 0.0]]
    """
    a = _flat(acts)
    if kind == "pearson":
        c = a - a.mean(1, keepdim=True)
        norms = c.norm(dim=1)
        ok = norms > 1e-12 * (1 + a.abs().amax(1))
        u = torch.where(ok[:, None], c / norms.clamp_min(1e-300)[:, None], torch.zeros_like(c))
        d = 1.0 - (u @ u.T).clamp(-1.0, 1.0)
    elif kind == "euclidean":
        d = torch.cdist(a, a)
    else:
        raise ValueError(f"rdm kind must be 'pearson' or 'euclidean' (got {kind!r})")
    d = (d + d.T) / 2  # exactly symmetric (a matrix product need not be, bit for bit)
    d.fill_diagonal_(0.0)
    return d


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 with ties given their average rank (as Spearman's rho needs)."""
    uniq, inverse, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts
    avg = start.to(torch.float64) + (counts.to(torch.float64) - 1) / 2
    return avg[inverse]


def _corr(x: torch.Tensor, y: torch.Tensor) -> float | None:
    x = x - x.mean()
    y = y - y.mean()
    nx_, ny = float(x.norm()), float(y.norm())
    if nx_ == 0.0 or ny == 0.0:
        return None
    return float((x @ y) / (nx_ * ny))


def rsa(a: torch.Tensor, b: torch.Tensor, rdm_kind: str = "pearson", compare: str = "spearman") -> float:
    """RSA dissimilarity ``rho`` in [0, 2] of two activation sets of the same `n` inputs.

    ``rho = 1 - corr(upper(RDM(a)), upper(RDM(b)))`` with `compare` ``spearman`` (rank
    correlation, ties averaged; spec §2.2) or ``pearson``. Identical RDMs give 0; when one RDM
    is constant (no structure to compare) and the other differs, the correlation counts as 0
    (``rho = 1``). `a` and `b` may differ in width; they must have the same number of rows (>= 2).

    >>> x = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    >>> rsa(x, x), rsa(x, 2 * x + 1)
    (0.0, 0.0)
    """
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(f"rsa needs the same n >= 2 samples in both sets (got {a.shape[0]} and {b.shape[0]})")
    if compare not in ("spearman", "pearson"):
        raise ValueError(f"compare must be 'spearman' or 'pearson' (got {compare!r})")
    n = a.shape[0]
    iu = torch.triu_indices(n, n, 1)
    va = rdm(a, rdm_kind)[iu[0], iu[1]]
    vb = rdm(b, rdm_kind)[iu[0], iu[1]]
    if torch.equal(va, vb):
        return 0.0
    if compare == "spearman":
        va, vb = _ranks(va), _ranks(vb)
        if torch.equal(va, vb):
            return 0.0
    r = _corr(va, vb)
    return 1.0 if r is None else min(2.0, max(0.0, 1.0 - r))


def task_conflict(conflicts: Sequence[float], norm: str = "l2") -> float:
    """Task-level conflict ``CC = ||C||`` of per-slot conflicts (spec §2.3).

    norm: ``l2`` (default), ``l1`` or ``mean``.

    >>> task_conflict([3.0, 4.0]), task_conflict([3.0, 4.0], "l1"), task_conflict([3.0, 4.0], "mean")
    (5.0, 7.0, 3.5)
    """
    c = [float(v) for v in conflicts]
    if norm == "l2":
        return math.sqrt(sum(v * v for v in c))
    if norm == "l1":
        return sum(abs(v) for v in c)
    if norm == "mean":
        return sum(c) / len(c) if c else 0.0
    raise ValueError(f"norm must be 'l2', 'l1' or 'mean' (got {norm!r})")


def normalise(conflicts: Sequence[float], method: str = "plain", temperature: float = 1.0) -> list[float]:
    """Per-slot conflicts as a distribution over slots (spec §2.4).

    method: ``plain`` (``C / sum C``; all zero gives the uniform distribution) or ``softmax``
    (``exp(C / temperature)``, normalised).

    >>> normalise([1.0, 3.0]), normalise([0.0, 0.0])
    ([0.25, 0.75], [0.5, 0.5])
    """
    c = [float(v) for v in conflicts]
    if not c:
        return []
    if any(v < 0 or not math.isfinite(v) for v in c):
        raise ValueError(f"conflicts must be finite and >= 0 (got {c})")
    if method == "plain":
        s = sum(c)
        return [1.0 / len(c)] * len(c) if s <= 0 else [v / s for v in c]
    if method == "softmax":
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (got {temperature!r})")
        m = max(c)
        e = [math.exp((v - m) / temperature) for v in c]
        s = sum(e)
        return [v / s for v in e]
    raise ValueError(f"normalise method must be 'plain' or 'softmax' (got {method!r})")


def ranking(probs: Sequence[float]) -> list[int]:
    """Slot indices from most to least conflicting; ties keep slot order (spec §2.4).

    >>> ranking([0.2, 0.5, 0.3, 0.5])
    [1, 3, 2, 0]
    """
    return sorted(range(len(probs)), key=lambda i: (-float(probs[i]), i))


def nucleus(probs: Sequence[float], delta: float, tol: float = 1e-9) -> list[int]:
    """The slots to grow: the smallest prefix of `ranking(probs)` whose mass is ``>= delta``.

    ``k* = min {k : sum_{i<=k} p_(i) >= delta - tol}`` (spec §2.4): ``delta = 0`` grows
    nothing, ``delta >= 1 - tol`` grows every slot (even slots of probability 0), and the result
    grows with `delta` and is always a prefix of the ranking. Returned in ranking order.

    >>> nucleus([0.2, 0.5, 0.3], 0.0), nucleus([0.2, 0.5, 0.3], 0.6), nucleus([0.2, 0.5, 0.3], 1.0)
    ([], [1, 2], [1, 2, 0])
    """
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be a number in [0, 1] (got {delta!r})")
    order = ranking(probs)
    if delta >= 1.0 - tol:
        return order
    total = 0.0
    for k, i in enumerate(order):
        if total >= delta - tol:
            return order[:k]
        total += float(probs[i])
    return order


def multitask_gain(errors: Sequence[float], reference: Sequence[float], floor: Sequence[float] | float = 0.0) -> float:
    """Multi-task gain in percent, positive = better than the reference (spec §2.7, corrected).

    ``(100/T) sum_t (ref_t - err_t) / max(ref_t, floor_t)``; errors are fractions in [0, 1].

    >>> multitask_gain([0.1, 0.2], [0.2, 0.2])
    25.0
    """
    if len(errors) != len(reference) or not errors:
        raise ValueError(f"need one reference error per task (got {len(errors)} and {len(reference)})")
    floors = [floor] * len(errors) if isinstance(floor, (int, float)) else list(floor)
    terms = []
    for e, r, f in zip(errors, reference, floors):
        den = max(float(r), float(f))
        if den <= 0:
            raise ValueError("a reference error is 0 and no floor > 0 was given")
        terms.append((float(r) - float(e)) / den)
    return 100.0 * sum(terms) / len(terms)


# ---- slots and activations -------------------------------------------------------------------


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
    return _log_entry(net, entry)


def _log_entry(net: JointNet, entry: dict) -> JointNet:
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


def accuracy_gain(accs: Sequence[float], reference: Sequence[float]) -> float:
    """Relative accuracy change in percent: ``(100/T) sum_t (A_t - ref_t) / ref_t`` (references
    floored at 1e-9).

    >>> accuracy_gain([0.9, 0.75], [0.9, 1.0])
    -12.5
    """
    if len(accs) != len(reference) or not accs:
        raise ValueError(f"need one reference accuracy per task (got {len(accs)} and {len(reference)})")
    return 100.0 * sum((float(a) - float(r)) / max(float(r), 1e-9) for a, r in zip(accs, reference)) / len(accs)


# ---- decisions -------------------------------------------------------------------------------


def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


@attrs.frozen
class Situation:
    """What a bind-grow decision sees when task `task` (at `index`) arrives: plain data.

    Attributes:
        task: the new task's name; index: its position in the stream (0-based).
        seed: the run's seed (random decisions are seeded by it and `index`).
        candidates: the bind candidates ``B``, in task order.
        slots: the slot names of the route of every task the new one may bind to (the
            candidates and a `sequence` entry's ``bind``), in route order.
        conflicts: ``{b: {slot: rho}}`` (RSA, spec §2.2) for the same tasks, or None when no
            independent net was trained.
        entry: the task's `sequence` entry (``bind``, ``delta``, ``grow``; {} when none).
    """

    task: str
    index: int
    seed: int
    candidates: tuple[str, ...]
    slots: Mapping[str, tuple[str, ...]]
    conflicts: Mapping[str, Mapping[str, float]] | None
    entry: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Choice:
    """A decision: the task to bind to, the grow coefficient (None: none) and the slots to grow
    (None: the nucleus of the bound task's conflicts for `delta`)."""

    bind: str
    delta: float | None
    grow: tuple[str, ...] | None


def rsa_argmin(candidates: Sequence[str], conflicts: Mapping[str, Mapping[str, float]], norm: str = "l2") -> str:
    """``argmin_b ||C_{t,b}||`` over `candidates` (spec §2.3); ties go to the earlier task.

    >>> rsa_argmin(["t1", "t2"], {"t1": {"fc1": 0.5}, "t2": {"fc1": 0.5}})
    't1'
    """
    scores = {b: task_conflict(list(conflicts[b].values()), norm) for b in candidates}
    return min(candidates, key=lambda b: (scores[b], list(candidates).index(b)))


def rsa_decision(s: Situation, *, delta: float, norm: str = "l2") -> Choice:
    """L2BG's rule: bind to the RSA argmin, grow the nucleus for `delta` (spec §2.3-2.4); a
    `sequence` entry's ``bind``, ``delta`` and ``grow`` override.

    Raises:
        ValueError: `s` has no conflicts (no independent net was trained).

    >>> s = Situation("t3", 2, 0, ("t1", "t2"), {}, {"t1": {"fc1": 0.9}, "t2": {"fc1": 0.2}})
    >>> rsa_decision(s, delta=0.5)
    Choice(bind='t2', delta=0.5, grow=None)
    """
    if s.conflicts is None:
        raise ValueError(f"task {s.task!r} needs its independent net for RSA")
    target = s.entry.get("bind") or rsa_argmin(s.candidates, s.conflicts, norm)
    d = s.entry.get("delta")
    grow = s.entry.get("grow")
    return Choice(target, float(delta) if d is None else float(d), tuple(grow) if grow is not None else None)


def random_decision(s: Situation, *, n_grow: int | None = None) -> Choice:
    """The ablation's rule (spec §5): a random bind target, a random number of slots (``n_grow``
    when given, capped at the number of slots) and random slots, seeded by (seed, index). A
    `sequence` entry's ``bind`` and ``grow`` override; its ``delta`` is passed on.

    >>> s = Situation("t2", 1, 0, ("t1",), {"t1": ("fc1", "fc2")}, None)
    >>> random_decision(s, n_grow=2)
    Choice(bind='t1', delta=None, grow=('fc1', 'fc2'))
    >>> random_decision(s) == random_decision(s)
    True
    """
    rng = random.Random(_seed(s.seed, "l2bg-random", s.index))
    target = s.entry.get("bind") or rng.choice(list(s.candidates))
    names = list(s.slots[target])
    k = rng.randint(0, len(names)) if n_grow is None else min(int(n_grow), len(names))
    grow = s.entry.get("grow")
    if grow is None:
        grow = sorted(rng.sample(names, k), key=names.index)
    return Choice(target, s.entry.get("delta"), tuple(grow))


def sequence_entry(sequence: Sequence[Mapping] | None, task: str, index: int) -> dict:
    """The entry of a grow `sequence` for task `task` at `index` ({} when none): the entry naming
    the task, or (entries without ``task``) the ``index - 1``-th, the first bind-grow step first.

    >>> sequence_entry([{"bind": "t1"}], "t2", 1), sequence_entry([{"bind": "t1"}], "t3", 2)
    ({'bind': 't1'}, {})
    """
    if not sequence:
        return {}
    if "task" in sequence[0]:
        hits = [dict(e) for e in sequence if e["task"] == task]
        return hits[0] if hits else {}
    i = index - 1
    return dict(sequence[i]) if 0 <= i < len(sequence) else {}


def rsa_sample(task: Any, *, seed: int, index: int, n: int) -> torch.Tensor:
    """The RSA inputs of stream task `task`: `n` validation inputs drawn by (seed, index), in
    data order (training inputs when the validation set has fewer than 3)."""
    x = task.x_val if len(task.x_val) >= 3 else task.x_train
    g = torch.Generator().manual_seed(_seed(seed, "l2bg-rsa", index))
    idx = torch.randperm(len(x), generator=g)[:n].sort().values
    return x[idx]


def needs_independent(opts: "BindGrowOptions", index: int, *, rsa: bool) -> bool:
    """Whether the task at `index` trains ``G_t^⊥``: RSA needs it from the second task on (when
    the rule is RSA), and ``reference``, ``first="adopt"`` and ``init="from_independent"`` ask
    for it on every task."""
    return (rsa and index > 0) or opts.reference or opts.first == "adopt" or opts.init == "from_independent"


# ---- the independent net ---------------------------------------------------------------------


def _tensor_digest(h, t: torch.Tensor) -> None:
    h.update(str(tuple(t.shape)).encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())


@attrs.frozen
class IndependentNet:
    """``G_t^⊥``: a scratch net and store (never part of the JointNet) and ``info``:
    ``{"val_acc", "test_acc", "n_val"}``."""

    net: JointNet
    store: ParamStore
    info: dict


def _layers(opts: "BindGrowOptions", task: Any) -> list:
    return list(opts.backbone or default_backbone(task.input_shape))


def independent_net(opts: "BindGrowOptions", run: TaskRun) -> IndependentNet:
    """Train (or load from ``opts.cache_dir``) ``G_t^⊥`` of `run`'s task in a scratch net and
    store, seeded by (run seed, task index), with the run's config under ``independent_config``."""
    task, index = run.task, run.index
    layers = _layers(opts, task)
    config = attrs.evolve(run.config, **(opts.independent_config or {}))
    seed = _seed(run.seed, "l2bg-independent", index)
    net, store = scratch_net(layers, task, seed=seed, device=config.device)
    path = None
    if opts.cache_dir is not None:
        h = hashlib.blake2b(digest_size=16)
        cfg = attrs.asdict(config)
        cfg.pop("progress", None)
        h.update(repr((repr(layers), sorted(cfg.items()), seed, task.name, index, task.n_classes)).encode())
        for t in (*task.train, *task.val):
            _tensor_digest(h, t)
        path = Path(opts.cache_dir) / f"independent-{h.hexdigest()}.jn"
    cached = None
    if path is not None and path.exists():
        from jointnet.persistence import snapshot

        try:
            cached_net, cached = snapshot.load(path, device=config.device)
            if cached_net.structure() != net.structure():
                cached = None
        except JointNetError:
            cached = None
    # A run of the same task over the scratch store: `train` and `accuracy` work there.
    scratch = attrs.evolve(run, store=store if cached is None else cached, config=config, results=[])
    if cached is None:
        scratch.train(net, say="independent net")
        if path is not None:
            from jointnet.persistence import snapshot

            path.parent.mkdir(parents=True, exist_ok=True)
            snapshot.save(path, net, scratch.store)
    info = {
        "val_acc": scratch.accuracy(net, task, "val") if len(task.y_val) else 0.0,
        "test_acc": scratch.accuracy(net, task, "test") if len(task.y_test) else 0.0,
        "n_val": int(len(task.y_val)),
    }
    return IndependentNet(net, scratch.store, info)


# ---- the imperative shell --------------------------------------------------------------------


def bind_grow_task(opts: "BindGrowOptions", net: JointNet, run: TaskRun, *,
                   decide: Callable[[Situation], Choice], rsa: bool) -> JointNet:
    """One task of L2BG or its ablation: the first task builds the template, a later one binds
    and grows as `decide` says; then train, and record every learned task's validation accuracy.

    `rsa` says whether `decide` needs the RSA conflicts (so the independent net from the second
    task on). Returns the new net; the tensors it adds go in ``run.store``.
    """
    task, index = run.task, run.index
    entry = sequence_entry(opts.sequence, task.name, index)
    ind = independent_net(opts, run) if needs_independent(opts, index, rsa=rsa) else None
    if not net.tasks:
        net = _first_task(opts, net, run, ind)
    else:
        net = _bind_grow(opts, net, run, ind, entry, decide)
    prov = net.tasks[task.name].annotations.get(PROV) or {}
    if prov.get("first") != "adopt":  # an adopted G_1 is the trained independent net (spec §2.3)
        run.train(net)
    # Algorithm 1 line 10: validation accuracy of every task learned so far.
    accs = {}
    for t in run.stream.tasks[: index + 1] if run.stream is not None else []:
        if t.name in net.tasks:
            accs[t.name] = run.accuracy(net, t, "val") if len(t.y_val) else 0.0
    return annotate(net, key=VAL_ACC, value=accs, task=task.name)


def _first_task(opts: "BindGrowOptions", net: JointNet, run: TaskRun, ind: IndependentNet | None) -> JointNet:
    task = run.task
    net = backbones.build(_layers(opts, task), task=task.name, n_classes=task.n_classes, net=net)
    if opts.first == "adopt":
        if ind is None:  # pragma: no cover - needs_independent asks for it
            raise run.error("first='adopt' needs the independent net")
        if ind.net.structure() != net.structure():  # pragma: no cover - same template, same build
            raise run.error("the independent net differs from the first task-net")
        # Same template, same log: the task-net's tensors have G_1's keys; put copies of them.
        for key in sorted(run.store.keys_of(ind.net)):
            t = ind.store[key]
            run.store.put(key, t.detach().clone(), trainable=isinstance(t, nn.Parameter))
    slots = task_slots(net, task.name, bn_slots=opts.bn_slots, head_slot=opts.head == "shared")
    prov: dict[str, Any] = {"bound_to": None, "delta": None, "grown": [s.name for s in slots],
                            "nucleus": None, "first": opts.first}
    if ind is not None:
        prov["independent"] = ind.info
    net = annotate(net, key=PROV, value=prov, task=task.name)
    return _log_entry(net, {"task": task.name, "bind": None, "delta": None, "grow": prov["grown"]})


def _bind_grow(opts: "BindGrowOptions", net: JointNet, run: TaskRun, ind: IndependentNet | None, entry: dict,
               decide: Callable[[Situation], Choice]) -> JointNet:
    task, index = run.task, run.index
    learned = list(net.tasks)
    candidates = [b for b in learned if opts.candidates is None or b in opts.candidates]
    if not candidates:
        raise run.error(f"no bind candidate: candidates={opts.candidates!r}, learned tasks are {learned} "
                        "(spec §7.7)")
    if entry.get("bind") is not None and entry["bind"] not in learned:
        raise run.error(f"cannot bind to {entry['bind']!r}; learned tasks are {learned}")
    head_slot = opts.head == "shared"
    targets = list(dict.fromkeys(candidates + ([entry["bind"]] if entry.get("bind") else [])))
    slots = {b: task_slots(net, b, bn_slots=opts.bn_slots, head_slot=head_slot) for b in targets}
    conflicts = None
    if ind is not None:
        x = rsa_sample(task, seed=run.seed, index=index, n=opts.rsa_samples).to(run.config.device)
        t_slots = task_slots(ind.net, task.name, bn_slots=opts.bn_slots, head_slot=head_slot)
        acts_t = slot_outputs(ind.net, ind.store, task.name, x, t_slots, opts.record)
        conflicts = {b: slot_conflicts(slot_outputs(net, run.store, b, x, slots[b], opts.record), acts_t,
                                       rdm_kind=opts.rdm, compare=opts.compare) for b in targets}
    situation = Situation(task.name, index, run.seed, tuple(candidates),
                          {b: tuple(s.name for s in slots[b]) for b in targets}, conflicts, entry)
    try:
        choice = decide(situation)
    except ValueError as e:
        raise run.error(str(e)) from None
    target, delta = choice.bind, choice.delta
    names = [s.name for s in slots[target]]
    probs = ranks = nuc = None
    if conflicts is not None:
        probs = normalise([conflicts[target][s] for s in names], opts.normalise, opts.temperature)
        ranks = {names[i]: r for r, i in enumerate(ranking(probs))}
        nuc = [names[i] for i in nucleus(probs, delta, opts.tol)] if delta is not None else None
    grow = choice.grow
    if grow is None:
        if nuc is None:
            raise run.error("neither a grow list nor a nucleus")
        grow = nuc
    unknown = [g for g in grow if g not in names]
    if unknown:
        raise run.error(f"no slot(s) {unknown}; slots are {names}")
    # Grown slots are listed in ranking order (slot order without conflicts).
    grow = sorted(grow, key=lambda s: ranks[s]) if ranks else sorted(grow, key=names.index)
    prov: dict[str, Any] = {"bound_to": target, "delta": delta, "grown": list(grow), "nucleus": nuc}
    node_prov: dict[str, dict] = {}
    if conflicts is not None:
        in_nuc = {s: None if nuc is None else s in nuc for s in names}
        prov["argmin"] = rsa_argmin(candidates, conflicts, opts.norm)
        prov["conflicts"] = {b: {"slots": dict(c), "norm": task_conflict(list(c.values()), opts.norm)}
                             for b, c in conflicts.items()}
        by_slot = {s.name: s for s in slots[target]}
        prov["slots"] = [
            {"slot": s, "node": by_slot[s].nodes[0], "conflict": conflicts[target][s], "prob": p,
             "rank": ranks[s], "in_nucleus": in_nuc[s], "grown": s in grow}
            for s, p in zip(names, probs)
        ]
        for s, p in zip(names, probs):
            node_prov[s] = {"conflict": conflicts[target][s], "prob": p, "rank": ranks[s], "in_nucleus": in_nuc[s]}
    if ind is not None:
        prov["independent"] = ind.info
    net = bind_grow_step(
        net, task=task.name, to=target, grow=grow, n_classes=task.n_classes, init=opts.init,
        head=opts.head, shared_lr_scale=opts.shared_lr_scale, bn_slots=opts.bn_slots,
        provenance=prov, node_provenance=node_prov, delta=delta,
    )
    if opts.init == "from_independent":
        if ind is None:  # pragma: no cover - needs_independent asks for it
            raise run.error("init='from_independent' needs the independent net")
        _copy_from_independent(opts, net, run.store, task.name, ind)
    return net


@torch.no_grad()
def _copy_from_independent(opts: "BindGrowOptions", net: JointNet, store: ParamStore, task: str,
                           ind: IndependentNet) -> None:
    """Write ``G_t^⊥``'s tensors of every slot `task` grew into the grown nodes (which
    `bind_grow_step` made fresh), through `store.update`."""
    store.realize(net)
    ind_nodes: dict[str, str] = {}
    for s in task_slots(ind.net, task, bn_slots=opts.bn_slots, head_slot=opts.head == "shared"):
        for n in s.nodes:
            ind_nodes["head" if s.name == "head" else template_of(ind.net, n)] = n
    for n in net.route(task):
        prov = net.node(n).annotations.get(PROV)
        if prov is None or prov.get("task") != task:
            continue
        src = ind.net.node(ind_nodes[prov["template"]])
        for p in net.node(n).params:
            store.update(p.key, ind.store[src.param(p.name, p.block).key])


# ---- the strategies --------------------------------------------------------------------------


_CHOICES = {
    "rdm": ("pearson", "euclidean"), "compare": ("spearman", "pearson"), "record": ("post", "pre"),
    "norm": ("l2", "l1", "mean"), "normalise": ("plain", "softmax"),
    "init": ("copy", "fresh", "from_independent"), "head": ("per_task", "shared"), "first": ("fresh", "adopt"),
}


def _one_of(_inst, a: attrs.Attribute, value: Any) -> None:
    allowed = _CHOICES[a.name]
    if value not in allowed:
        raise ValueError(f"'{a.name}' must be one of {allowed} (got {value!r})")


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _check_delta(value: Any, what: str = "delta") -> None:
    vals = value if isinstance(value, (list, tuple)) else [value]
    if not vals or any(not _is_number(v) or not 0 <= v <= 1 for v in vals):
        raise ValueError(f"'{what}' must be a number in [0, 1] or a non-empty list of them (got {value!r})")


def _delta(_inst, a: attrs.Attribute, value: Any) -> None:
    _check_delta(value, a.name)


def _number(lo: float, *, strict: bool):
    def check(_inst, a: attrs.Attribute, value: Any) -> None:
        if not _is_number(value) or (value <= lo if strict else value < lo):
            raise ValueError(f"'{a.name}' must be a number {'>' if strict else '>='} {lo} (got {value!r})")
    return check


def _rsa_samples(_inst, a: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 3:
        raise ValueError(f"'{a.name}' must be an int >= 3 (got {value!r})")


def _names_or_none(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)):
        raise ValueError(f"'{a.name}' must be None or a list of task names (got {value!r})")




def _train_fields(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    known = set(attrs.fields_dict(TrainConfig))
    if not isinstance(value, Mapping) or set(value) - known:
        raise ValueError(f"'{a.name}' must be None or a dict of TrainConfig fields ({', '.join(sorted(known))}) "
                         f"(got {value!r})")


def _sequence(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"'{a.name}' must be a list of dicts (got {value!r})")
    keyed = [isinstance(e, Mapping) and "task" in e for e in value]
    if any(keyed) and not all(keyed):
        raise ValueError(f"'{a.name}': give every entry a 'task' key or none (got {value!r})")
    for e in value:
        if not isinstance(e, Mapping) or set(e) - {"task", "bind", "delta", "grow"}:
            raise ValueError(f"'{a.name}' entries are dicts with keys task, bind, delta, grow (got {e!r})")
        d = e.get("delta")
        if d is not None and (not _is_number(d) or not 0 <= d <= 1):
            raise ValueError(f"'{a.name}' entries' delta is a number in [0, 1] (got {e!r})")
        if not isinstance(e.get("bind"), (str, type(None))) or not isinstance(e.get("task", ""), str):
            raise ValueError(f"'{a.name}' entries name tasks with strings (got {e!r})")
        grow = e.get("grow")
        if grow is not None and (not isinstance(grow, (list, tuple)) or not all(isinstance(g, str) for g in grow)):
            raise ValueError(f"'{a.name}' entries' grow is a list of slot names (got {e!r})")


def _n_grow(_inst, a: attrs.Attribute, value: Any) -> None:
    vals = value if isinstance(value, (list, tuple)) else [value]
    if value is not None and (not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in vals)):
        raise ValueError(f"'{a.name}' must be None, an int >= 0 or a list of them (got {value!r})")


def _str_or_none(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, (str, Path)):
        raise ValueError(f"'{a.name}' must be None or a directory (got {value!r})")


@attrs.frozen(kw_only=True)
class BindGrowOptions:
    """The options `L2BG` and `RandomGrowth` share (the bind-grow shell's, `bind_grow_task`):
    data only, no behaviour. Each is described, with its spec section, in the module docstring."""

    backbone: list | None = attrs.field(default=None, validator=backbone_option)
    delta: float | list = attrs.field(default=0.55, validator=_delta)
    rdm: str = attrs.field(default="pearson", validator=_one_of)
    compare: str = attrs.field(default="spearman", validator=_one_of)
    rsa_samples: int = attrs.field(default=200, validator=_rsa_samples)
    record: str = attrs.field(default="post", validator=_one_of)
    norm: str = attrs.field(default="l2", validator=_one_of)
    normalise: str = attrs.field(default="plain", validator=_one_of)
    temperature: float = attrs.field(default=1.0, validator=_number(0.0, strict=True))
    tol: float = attrs.field(default=1e-9, validator=_number(0.0, strict=False))
    init: str = attrs.field(default="copy", validator=_one_of)
    head: str = attrs.field(default="per_task", validator=_one_of)
    shared_lr_scale: float = attrs.field(default=0.1, validator=_number(0.0, strict=False))
    bn_slots: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    first: str = attrs.field(default="fresh", validator=_one_of)
    candidates: list | None = attrs.field(default=None, validator=_names_or_none)
    sequence: list | None = attrs.field(default=None, validator=_sequence)
    reference: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    independent_config: dict | None = attrs.field(default=None, validator=_train_fields)
    cache_dir: str | None = attrs.field(default=None, validator=_str_or_none)


@attrs.frozen(kw_only=True)
class L2BG(BindGrowOptions):
    """L2BG: bind to the least conflicting task (RSA), grow the nucleus of conflicting slots.

    Options and their defaults: see the module docstring (each open choice cites the spec).

    >>> L2BG(delta=[0.3, 0.8]).delta
    [0.3, 0.8]
    """

    name: ClassVar[str] = "l2bg"  # also when made directly, not through `get`: errors name it

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Bind and grow `run`'s task (`rsa_decision`), train it, record the validation accuracies."""
        delta = float(per_task(self.delta, run.index, offset=1))
        decide = functools.partial(rsa_decision, delta=delta, norm=self.norm)
        return bind_grow_task(self, net, run, decide=decide, rsa=True)


@attrs.frozen(kw_only=True)
class RandomGrowth(BindGrowOptions):
    """Random growth, the paper's ablation (spec §5): random bind target, number and choice of
    slots, seeded by (run seed, task index) (`random_decision`). ``n_grow`` (int, list per
    bind-grow step, or None for a uniform draw in 0..|L|) fixes how many slots grow. A `sequence`
    still overrides. No independent nets unless ``reference`` (default False) asks."""

    name: ClassVar[str] = "l2bg-random"
    n_grow: int | list | None = attrs.field(default=None, validator=_n_grow)
    reference: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Bind and grow `run`'s task at random (`random_decision`), train it, record accuracies."""
        n = None if self.n_grow is None else per_task(self.n_grow, run.index, offset=1)
        decide = functools.partial(random_decision, n_grow=n)
        return bind_grow_task(self, net, run, decide=decide, rsa=False)
