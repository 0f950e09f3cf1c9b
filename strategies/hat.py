"""HAT, Hard Attention to the Task (Serra, Suris, Miron, Karatzoglou, ICML 2018), as a strategy.

The mechanism is SPG spec §8.4 (HAT is SPG's main baseline), which was checked there against the
authors' code (``joansj/hat``: ``alexnet_hat.py``, ``approaches/hat.py``).

**Graph side** (unlike SPG, HAT changes the topology):

- The first task builds the backbone with a `Gate` node after every trunk block (`gated_layers`:
  after ReLU/Dropout/MaxPool of a conv block, after ReLU/Dropout of an fc block; heads are not
  gated). Later tasks `bind` to the first task's route and add their own head.
- Every task gets its own embedding on every gate (`add_task_embedding`, a per-task variant of
  the gate's ``embedding``, N(0, 1) like ``nn.Embedding``). The gate computes
  ``x * sigmoid(s * e_t)``; `s` is the compiled module's ``gate_s``.
- After task t, each gate's cumulative mask ``a^{<=t} = max(a^{<=t-1}, sigmoid(s_max e^t))`` goes
  into the store, referenced by the gate's ``hat.cum_mask`` annotation (a `TensorRef`); the net
  annotation ``hat`` records ``s_max`` and the tasks done. The finished task's head is frozen
  (train policy). Nothing lives on the strategy object, so a run resumed from a snapshot
  continues exactly.

**Training** (`HATHooks`, for task t):

- ``s`` is annealed within each epoch, ``s = 1/s_max + (s_max - 1/s_max) * b / B`` for batch
  ``b`` of ``B``; ``s = s_max`` at evaluation and for the mask update.
- Loss ``CE + c * R``, ``R = sum a^t (1 - a^{<t}) / sum (1 - a^{<t})`` over every gate unit
  (the plain mean of the gates for the first task).
- Gradient conditioning (from the second task on): the gradient of a weight joining input unit j
  to output unit i is multiplied by ``1 - min(a^{<t}_post[i], a^{<t}_pre[j])``, a bias by
  ``1 - a^{<t}_post[i]``. The post gate is the first gate after the layer, the pre gate the
  nearest gate before it, both found by walking the task's route through channel-preserving
  nodes (`gate_neighbours`). The first layer (fed by the image) uses its output gate only; after
  a Flatten the channel gate is repeated over the H*W positions of each channel.
- Embedding compensation ``g_e *= (s_max / s) (cosh(clamp(s e, ±50)) + 1) / (cosh(e) + 1)``,
  then the total gradient norm is clipped at 10000, the optimizer steps, and the embeddings are
  clamped to [-6, 6].
- Inference for task t runs t's gates at ``s = s_max`` (`HAT.eval_hooks`).

**Options** (`HAT` fields, defaults from the paper's code): ``s_max=400``, ``c=0.75``,
``clip_grad=10000`` (None: off), ``thres_cosh=50``, ``emb_clamp=6``, ``backbone=None`` (the
runner's `default_backbone`), ``insert_gates=True`` (False: the backbone must already hold
``{"kind": "Gate"}`` items), ``freeze_old_heads=True``.

**Train config.** The runner's `TrainConfig` sets optimizer, learning rate and schedule. HAT's
code uses `RECOMMENDED_CONFIG`: plain SGD (momentum 0), lr 0.05, batch 64, up to 200 epochs,
lr / 3 after 5 epochs without validation improvement, stop below lr 1e-4 (``schedule="plateau"``).
The runner uses it as the strategy's defaults (a run's ``config`` / ``-T key=value`` override it).

**Choices the spec leaves open** (``[ours]``):

- ``R`` when every unit of every gate is already used (``sum (1 - a^{<t}) == 0``): 0 (the
  original code divides by zero).
- A BatchNorm in the trunk: its weight and bias are conditioned like a bias, by the gate after
  it; its running statistics are not protected (use per-task BN if that matters).
- Weight decay is applied by the optimizer after the gradient conditioning, so it erodes blocked
  weights: the strategy warns when ``config.weight_decay > 0``.

Example:

>>> from jointnet.experiments.runner import RunSpec
>>> spec = RunSpec("hat", "split-fmnist", strategy_options={"s_max": 400.0, "c": 0.75},
...                config=RECOMMENDED_CONFIG)
>>> spec.config["schedule"]
'plateau'
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import torch
from attrs.validators import ge, gt, instance_of, optional

from jointnet import backbones
from jointnet.execution.compile import compile_net
from jointnet.errors import JointNetError
from jointnet.graph.layers import ParamInfo
from jointnet.graph.net import JointNet, TensorRef
from jointnet.execution.store import ParamStore
from jointnet.graph import add_head, add_task, add_task_embedding, annotate, bind, freeze
from jointnet.graph.shapes import task_shapes
from jointnet.execution.optim import param_groups
from jointnet.experiments.trainer import Hooks
from strategies.base import RunState, Strategy, add_column, default_backbone, register

__all__ = [
    "HAT", "HATHooks", "GateScale", "RECOMMENDED_CONFIG", "gated_layers", "anneal_s",
    "hat_regulariser", "compensation", "cumulative_update", "gates_on_route", "gate_neighbours",
    "param_factor", "conditioning", "cumulative_mask", "embedding_key", "commit_masks",
]

#: TrainConfig fields of HAT's original code (SPG spec §8.4); the runner's config decides.
RECOMMENDED_CONFIG: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 64,
    "epochs": 200, "schedule": "plateau", "lr_factor": 3.0, "lr_patience": 5, "min_lr": 1e-4,
}

CUM_MASK = "hat.cum_mask"  # gate annotation: TensorRef to a^{<=t}
NET_KEY = "hat"  # net annotation: {"s_max": float, "tasks": [...]}

# Kinds that continue a trunk block (the gate goes after them) and kinds that start a new one
# (the gate goes before them).
_CONTINUE = {"ReLU", "BatchNorm", "Dropout", "MaxPool2d", "AvgPool2d", "GlobalAvgPool", "Identity"}
_START = {"Conv2d", "Linear", "Flatten"}


# ---- pure functions -------------------------------------------------------------------------


def gated_layers(layers: list) -> list:
    """`layers` (a declarative backbone list) with a ``{"kind": "Gate"}`` after every trunk block.

    A block starts at a Conv2d or Linear and runs through the ReLU / BatchNorm / Dropout / pooling
    that follow it; its gate goes before the next Conv2d, Linear or Flatten, or at the end. A list
    that already holds a Gate is returned unchanged (the user placed the gates).

    Raises:
        JointNetError: a merge (Add, Concat) or an item with explicit ``inputs``: gates are only
            inserted into sequential backbones.

    >>> [backbones._kind(i) for i in gated_layers(backbones.small_conv(widths=(8,), hidden=16))]
    ['input', 'Conv2d', 'ReLU', 'MaxPool2d', 'Gate', 'Flatten', 'Linear', 'ReLU', 'Gate']
    """
    kinds = [backbones._kind(i) for i in layers]
    if "Gate" in kinds:
        return list(layers)
    out: list = []
    open_block = False
    for item, kind in zip(layers, kinds):
        if kind in ("Add", "Concat") or (isinstance(item, dict) and "inputs" in item):
            raise JointNetError(
                f"HAT: cannot insert gates into a non-sequential backbone (item {item!r}); "
                "place {'kind': 'Gate'} items yourself and pass insert_gates=False")
        if kind in _START and open_block:
            out.append({"kind": "Gate"})
            open_block = False
        elif kind not in _START and kind not in _CONTINUE and kind != "input" and open_block:
            raise JointNetError(f"HAT: do not know where a block ends at {kind} (item {item!r})")
        out.append(dict(item) if isinstance(item, dict) else item)
        if kind in ("Conv2d", "Linear"):
            open_block = True
    if open_block:
        out.append({"kind": "Gate"})
    return out


def anneal_s(batch: int, n_batches: int, s_max: float) -> float:
    """HAT's annealed gate scale for batch `batch` of `n_batches`: 1/s_max at 0, -> s_max.

    >>> anneal_s(0, 10, 400.0), anneal_s(5, 10, 400.0)
    (0.0025, 200.00125)
    """
    return 1.0 / s_max + (s_max - 1.0 / s_max) * batch / max(n_batches, 1)


def hat_regulariser(gates: list[torch.Tensor], cums: list[torch.Tensor]) -> torch.Tensor:
    """``R = sum a (1 - a^{<t}) / sum (1 - a^{<t})`` over all gates; 0 when nothing is free.

    >>> float(hat_regulariser([torch.tensor([0.5, 1.0])], [torch.zeros(2)]))
    0.75
    """
    num = sum((a * (1 - c)).sum() for a, c in zip(gates, cums))
    den = sum(float((1 - c).sum()) for c in cums)
    if den <= 0:  # [ours]: every unit already used by an earlier task
        return num * 0.0
    return num / den


def compensation(e: torch.Tensor, s: float, s_max: float, thres_cosh: float = 50.0) -> torch.Tensor:
    """HAT's embedding-gradient factor ``(s_max/s) (cosh(clamp(s e)) + 1) / (cosh(e) + 1)``.

    >>> round(float(compensation(torch.tensor([0.0]), 2.0, 4.0)), 6)
    2.0
    """
    num = torch.cosh(torch.clamp(s * e, -thres_cosh, thres_cosh)) + 1
    den = torch.cosh(e) + 1
    return (s_max / s) * num / den


def cumulative_update(old: torch.Tensor | None, e: torch.Tensor, s_max: float) -> torch.Tensor:
    """``a^{<=t} = max(a^{<=t-1}, sigmoid(s_max e^t))`` (just the gate when there is no old mask)."""
    a = torch.sigmoid(s_max * e.detach())
    return a.clone() if old is None else torch.maximum(old.to(a.device), a)


def param_factor(info: ParamInfo, post: torch.Tensor, pre: torch.Tensor | None) -> torch.Tensor:
    """Gradient multiplier of one parameter tensor: ``1 - min(post[i], pre[j])``.

    `post` runs along the tensor's output axis, `pre` (None: the input is not gated) along its
    input axis; the result broadcasts against the tensor (size 1 on other axes).

    >>> info = ParamInfo((2, 3), out_axis=0, in_axis=1)
    >>> param_factor(info, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.5, 0.0])).tolist()
    [[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]]
    """
    nd = len(info.shape)

    def along(v: torch.Tensor, axis: int, what: str) -> torch.Tensor:
        if v.numel() != info.shape[axis]:
            raise JointNetError(f"HAT: the {what} gate has {v.numel()} units, the parameter "
                                f"{info.shape} has {info.shape[axis]} along axis {axis}")
        view = [1] * nd
        view[axis] = -1
        return v.reshape(view)

    a = along(post, info.out_axis, "post")
    if info.in_axis is not None and pre is not None:
        a = torch.minimum(a, along(pre, info.in_axis, "pre"))
    return 1 - a


# ---- graph analysis -------------------------------------------------------------------------


def gates_on_route(net: JointNet, task: str) -> list[str]:
    """The Gate nodes of `task`'s route, in route order."""
    return [n for n in net.route(task) if net.node(n).kind == "Gate"]


def _next_on_route(net: JointNet, task: str, node: str) -> list[str]:
    return [v for _, v, d in net.graph.out_edges(node, data=True) if task in d["tasks"]]


def gate_neighbours(net: JointNet, task: str, node: str) -> tuple[str | None, str | None, int]:
    """(pre gate, post gate, repeat) of the parametric node `node` on `task`'s route.

    The post gate is the first Gate after `node`, the pre gate the nearest Gate before it, both
    reached through channel-preserving nodes (ReLU, BatchNorm, Dropout, pooling, Flatten). pre is
    None when the walk reaches the input (the first layer); post is None when it reaches the
    head. `repeat` is how many input positions each pre-gate unit covers (H*W across a Flatten).

    Raises:
        JointNetError: the walk meets a merge or another parametric layer before a gate.
    """

    def stuck(where: str, at: str) -> JointNetError:
        return JointNetError(f"HAT: no {where} gate for node {node!r} on the route of task {task!r}: "
                             f"the walk reaches {at!r} ({net.node(at).kind}) first")

    post = None
    cur = node
    while True:
        nxt = _next_on_route(net, task, cur)
        if len(nxt) != 1:
            raise JointNetError(f"HAT: node {cur!r} feeds {len(nxt)} nodes on the route of task "
                                f"{task!r}; gates need a sequential trunk")
        cur = nxt[0]
        kind = net.node(cur).kind
        if kind == "Gate":
            post = cur
            break
        if kind == "Head":
            break
        if not net.node(cur).spec.passes_channels:
            raise stuck("post", cur)
    pre, repeat = None, 1
    cur = node
    shapes = task_shapes(net, task)
    while True:
        ins = net.inputs_of(cur, task)
        if len(ins) != 1:
            raise JointNetError(f"HAT: node {cur!r} has {len(ins)} inputs on the route of task "
                                f"{task!r}; gates need a sequential trunk")
        cur = ins[0]
        kind = net.node(cur).kind
        if kind == "Gate":
            pre = cur
            break
        if kind == "Input":
            break
        if kind == "Flatten":
            repeat *= math.prod(shapes[net.inputs_of(cur, task)[0]][1:])
        elif not net.node(cur).spec.passes_channels:
            raise stuck("pre", cur)
    return pre, post, repeat


def cumulative_mask(net: JointNet, store: ParamStore, gate: str) -> torch.Tensor | None:
    """The gate's cumulative mask a^{<=t} from the store (None before the first task is done)."""
    ref = net.node(gate).annotations.get(CUM_MASK)
    return None if ref is None else store[ref.key]


def embedding_key(net: JointNet, task: str, gate: str) -> str:
    """Store key of `task`'s own embedding on `gate`.

    Raises:
        JointNetError: `task` has no embedding of its own there (see `add_task_embedding`).
    """
    p = net.params_for(task, gate)["embedding"][0][0]
    if p.task != task:
        raise JointNetError(f"HAT: task {task!r} has no embedding of its own on gate {gate!r}; "
                            "apply add_task_embedding first")
    return p.key


def conditioning(net: JointNet, store: ParamStore, task: str) -> dict[str, torch.Tensor]:
    """HAT's gradient multipliers for training `task`: store key -> factor (broadcastable).

    Every trainable tensor of a parametric trunk node of `task`'s route (heads and gates excepted)
    gets ``param_factor`` from the cumulative masks of its post and pre gates (a gate without a
    mask counts as all zeros). Empty when no gate has a cumulative mask yet (the first task).
    """
    gates = gates_on_route(net, task)
    cums = {g: cumulative_mask(net, store, g) for g in gates}
    if all(c is None for c in cums.values()):
        return {}

    def cum(g: str) -> torch.Tensor:
        c = cums[g]
        return torch.zeros(net.node(g).spec.units, device=store.device) if c is None else c.detach()

    head = net.tasks[task].head
    out: dict[str, torch.Tensor] = {}
    for n in net.route(task):
        node = net.node(n)
        if n == head or node.kind in ("Gate", "Input"):
            continue
        grid = net.params_for(task, n)
        infos = net.effective_spec(task, n).params()
        trainable = {name: rows for name, rows in grid.items() if not infos[name].buffer}
        if not trainable:
            continue
        pre, post, repeat = gate_neighbours(net, task, n)
        if post is None:
            raise JointNetError(f"HAT: node {n!r} of task {task!r} has parameters but no gate after "
                                "it, so HAT cannot protect them; add a Gate after its block")
        a_post = cum(post)
        a_pre = None if pre is None else cum(pre).repeat_interleave(repeat)
        for name, rows in trainable.items():
            if len(rows) != 1 or len(rows[0]) != 1:
                raise JointNetError(f"HAT: node {n!r} holds channel groups (widened); not supported")
            out[rows[0][0].key] = param_factor(infos[name], a_post, a_pre)
    return out


def commit_masks(net: JointNet, store: ParamStore, task: str, s_max: float) -> JointNet:
    """The post-task pass: fold `task`'s gates at ``s_max`` into every gate's cumulative mask.

    The new masks go into `store` under fresh keys; the returned net references them from the
    gates' ``hat.cum_mask`` annotations and records `task` in the net annotation ``hat``.
    """
    for g in gates_on_route(net, task):
        e = store[embedding_key(net, task, g)]
        new = cumulative_update(cumulative_mask(net, store, g), e, s_max)
        key = f"{g}.{CUM_MASK}@{net.lineage}"
        store.put(key, new, trainable=False)
        net = annotate(net, node=g, key=CUM_MASK, value=TensorRef(key))
    done = list(net.annotations.get(NET_KEY, {}).get("tasks", ()))
    return annotate(net, key=NET_KEY, value={"s_max": float(s_max), "tasks": done + [task]})


# ---- hooks ----------------------------------------------------------------------------------


class GateScale(Hooks):
    """Evaluation hooks: run every gate at ``s = s_max``."""

    def __init__(self, s_max: float):
        self.s_max = s_max

    def batch_context(self, module, ctx: dict) -> None:
        module.gate_s = self.s_max


class HATHooks(Hooks):
    """Training hooks for one task: annealed s, ``c * R``, conditioning, compensation, clamping.

    Args:
        embeddings: the task's own gate embeddings (store tensors, trained).
        cums: the cumulative masks a^{<t} of the same gates (zeros for the first task).
        factors: (parameter, gradient multiplier) pairs from `conditioning`.
        params: every tensor the optimizer trains (clipped together).
    """

    def __init__(self, *, embeddings, cums, factors, params, s_max=400.0, c=0.75, thres_cosh=50.0,
                 emb_clamp=6.0, clip_grad=10000.0):
        self.embeddings = list(embeddings)
        self.cums = list(cums)
        self.factors = list(factors)
        self.params = list(params)
        self.s_max = s_max
        self.c = c
        self.thres_cosh = thres_cosh
        self.emb_clamp = emb_clamp
        self.clip_grad = clip_grad
        self.s = s_max

    def batch_context(self, module, ctx: dict) -> None:
        if ctx.get("training"):
            self.s = anneal_s(ctx["batch"], ctx["n_batches"], self.s_max)
        else:
            self.s = self.s_max
        module.gate_s = self.s

    def extra_loss(self, module, x, y, logits, ctx: dict):
        if not self.c or not self.embeddings:
            return None
        gates = [torch.sigmoid(self.s * e) for e in self.embeddings]
        return self.c * hat_regulariser(gates, self.cums)

    @torch.no_grad()
    def transform_grads(self, module, ctx: dict) -> None:
        for p, f in self.factors:
            if p.grad is not None:
                p.grad.mul_(f)
        for e in self.embeddings:
            if e.grad is not None:
                e.grad.mul_(compensation(e, self.s, self.s_max, self.thres_cosh))
        if self.clip_grad:
            grads = [p.grad for p in self.params if p.grad is not None]
            total = torch.nn.utils.get_total_norm(grads)
            # Scale only when over the limit (the trainer syncs every batch anyway): at 10000 the
            # clip almost never fires, and an unconditional scale by 1.0 costs a pass over weights.
            if float(total) > self.clip_grad:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.clip_grad, total)

    @torch.no_grad()
    def after_step(self, module, ctx: dict) -> None:
        for e in self.embeddings:
            e.clamp_(-self.emb_clamp, self.emb_clamp)


# ---- the strategy ---------------------------------------------------------------------------


@register("hat")
@attrs.define
class HAT(Strategy):
    """HAT (Serra et al., ICML 2018; SPG spec §8.4): per-task hard attention gates on a shared trunk.

    Options (defaults are the paper's code): see the module docstring. The runner starts from
    `recommended_config` (the paper's optimizer and schedule); a run's own config overrides it.
    """

    recommended_config: ClassVar[dict[str, Any]] = RECOMMENDED_CONFIG

    backbone: list | None = None
    insert_gates: bool = attrs.field(default=True, validator=instance_of(bool))
    s_max: float = attrs.field(default=400.0, converter=float, validator=gt(0.0))
    c: float = attrs.field(default=0.75, converter=float, validator=ge(0.0))
    clip_grad: float | None = attrs.field(default=10000.0, validator=optional(gt(0)))
    thres_cosh: float = attrs.field(default=50.0, converter=float, validator=gt(0.0))
    emb_clamp: float = attrs.field(default=6.0, converter=float, validator=gt(0.0))
    freeze_old_heads: bool = attrs.field(default=True, validator=instance_of(bool))

    def layers(self, input_shape) -> list:
        """The backbone the first task builds (gated unless ``insert_gates=False``)."""
        layers = list(self.backbone or default_backbone(input_shape))
        return gated_layers(layers) if self.insert_gates else layers

    def before_task(self, state: RunState, task, index: int) -> None:
        if index == 0:
            net = add_column(state.net, self.layers(task.input_shape), task.name, task.n_classes)
            if not gates_on_route(net, task.name):
                raise JointNetError("HAT: the backbone has no Gate layers; use insert_gates=True "
                                    "or put {'kind': 'Gate'} items after its blocks")
        else:
            first = next(iter(state.net.tasks))
            net = add_task(state.net, task=task.name)
            net = bind(net, task=task.name, to=first)
        for g in gates_on_route(net, task.name):
            net = add_task_embedding(net, node=g, task=task.name)
        if net.tasks[task.name].head is None:
            net = add_head(net, task=task.name, n_classes=task.n_classes)
        state.net = net

    def hooks(self, state: RunState, task, index: int) -> HATHooks:
        net, store, t = state.net, state.store, task.name
        gates = gates_on_route(net, t)
        embeddings = [store[embedding_key(net, t, g)] for g in gates]
        cums = []
        for g, e in zip(gates, embeddings):
            c = cumulative_mask(net, store, g)
            cums.append(torch.zeros_like(e.detach()) if c is None else c.detach())
        factors = [(store[k], f) for k, f in conditioning(net, store, t).items()]
        params = [p for grp in param_groups(net, store, t, state.config.lr) for p in grp["params"]]
        return HATHooks(embeddings=embeddings, cums=cums, factors=factors, params=params,
                        s_max=self.s_max, c=self.c, thres_cosh=self.thres_cosh,
                        emb_clamp=self.emb_clamp, clip_grad=self.clip_grad)

    def eval_hooks(self, state: RunState, task_name: str) -> Hooks:
        return GateScale(self.s_max)

    def train_task(self, state: RunState, task, index: int):
        if state.config.weight_decay > 0:
            state.echo(f"HAT warning: weight_decay={state.config.weight_decay} erodes the weights "
                       "HAT blocks (it is applied after gradient conditioning); use 0")
        res = super().train_task(state, task, index)
        # Leave the (cached) compiled module at inference scale, not the last annealed s.
        compile_net(state.net, state.store, task.name).gate_s = self.s_max
        return res

    def after_task(self, state: RunState, task, index: int) -> None:
        net = commit_masks(state.net, state.store, task.name, self.s_max)
        if self.freeze_old_heads:
            net = freeze(net, nodes=net.tasks[task.name].head)
        state.net = net
