"""HAT, Hard Attention to the Task (Serra, Suris, Miron, Karatzoglou, ICML 2018), as a strategy.

The mechanism is SPG spec §8.4 (HAT is SPG's main baseline), which was checked there against the
authors' code (``joansj/hat``: ``alexnet_hat.py``, ``approaches/hat.py``).

**Graph side** (unlike SPG, HAT changes the topology):

- The first task builds the backbone with a `Gate` node after every trunk block (`gated_layers`:
  after ReLU/Dropout/MaxPool of a conv block, after ReLU/Dropout of an fc block; heads are not
  gated). Later tasks `bind` to the first task's route and add their own head.
- Every task gets its own embedding on every gate (`add_task_embedding`, a per-task variant of
  the gate's ``embedding``, N(0, 1) like ``nn.Embedding``). The gate computes
  ``x * sigmoid(s * e_t)``; `s` is the call context's ``gate_scale`` (`Context`).
- Gradient conditioning is train policy (SPG spec §8.2, operation 4: one "per-parameter gradient
  multiplier provider" interface for SPG and HAT): the first task puts a ``multiply`` gradient
  rule with the provider ``"hat"`` (`hat_provider`, registered when this module is imported) on
  every trainable parameter of every parametric trunk node, for every task. The trainer asks the
  provider for the multiplier when a task's training starts; it is None (no-op) until a task
  is done.
- After task t, each gate's cumulative mask ``a^{<=t} = max(a^{<=t-1}, sigmoid(s_max e^t))`` goes
  into the store (`ParamStore.put`, a new key per task), referenced by the gate's
  ``hat.cum_mask`` annotation (a `TensorRef`); the net annotation ``hat`` records ``s_max`` and
  the tasks done. The finished task's head is frozen (train policy). Nothing lives on the
  strategy object, so a run resumed from a snapshot continues exactly.
- Inference runs a task's gates at ``s = s_max``: the `Context` default (400.0) or, for another
  ``s_max``, the task's recorded inference context (`set_context`, ``gate_scale``), which every
  evaluation (the runner, `jointnet.execution.run`, export) reads from the net.

**Training** (for task t; the trainer's order per batch is forward, loss, backward, the policy's
gradient rules, `HATHooks.transform_grads`, the optimizer step, `HATHooks.after_step`):

- ``s`` is annealed within each epoch, ``s = 1/s_max + (s_max - 1/s_max) * b / B`` for batch
  ``b`` of ``B`` (`HATHooks.context`); ``s = s_max`` for validation.
- Loss ``CE + c * R``, ``R = sum a^t (1 - a^{<t}) / sum (1 - a^{<t})`` over every gate unit
  (the plain mean of the gates for the first task).
- Gradient conditioning (the ``"hat"`` rule, from the second task on): the gradient of a weight
  joining input unit j to output unit i is multiplied by ``1 - min(a^{<t}_post[i],
  a^{<t}_pre[j])``, a bias by ``1 - a^{<t}_post[i]``. The post gate is the first gate after the
  layer, the pre gate the nearest gate before it, both found by walking the task's route through
  channel-preserving nodes (`gate_neighbours`). The first layer (fed by the image) uses its
  output gate only; after a Flatten the channel gate is repeated over the H*W positions of each
  channel.
- Then (`HATHooks`) embedding compensation ``g_e *= (s_max / s) (cosh(clamp(s e, ±50)) + 1) /
  (cosh(e) + 1)``, clipping of the total gradient norm at 10000, the optimizer step, and the
  embeddings clamped to [-6, 6] (written with `ParamStore.update`).

**Options** (`HAT` fields; defaults from the paper's code):

- ``backbone`` = None: a declarative layer list; None is `default_backbone` of the stream's input.
- ``insert_gates`` = True: put a Gate after every trunk block (`gated_layers`); False: the
  backbone must already hold ``{"kind": "Gate"}`` items.
- ``s_max`` = 400.0 (> 0): the gates' largest scale, used for inference and mask extraction.
- ``c`` = 0.75 (>= 0): the weight of the regulariser R.
- ``clip_grad`` = 10000.0 (> 0, or None: off): the total gradient norm is clipped at it.
- ``thres_cosh`` = 50.0 (> 0): the clamp of ``s e`` in the compensation's cosh.
- ``emb_clamp`` = 6.0 (> 0): embeddings are clamped to ``[-emb_clamp, emb_clamp]`` after a step.
- ``freeze_old_heads`` = True: freeze a finished task's head (it is off later tasks' routes
  anyway; freezing keeps optimizers with state off it).

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

**Deviation from the pre-Core-2 implementation** (same arithmetic, new records): the rule and,
for ``s_max != 400``, the inference context are rewrites in the net's log, so the net's lineage,
hence the keys and fresh initial values of every tensor created after them (later tasks'
embeddings and heads), differ from runs of the older code with the same seed. The first task's
tensors and its training are unchanged.

Example:

>>> from jointnet.experiments.runner import RunSpec
>>> spec = RunSpec("hat", "split-fmnist", strategy_options={"s_max": 400.0, "c": 0.75},
...                config=RECOMMENDED_CONFIG)
>>> spec.config["schedule"]
'plateau'
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
from attrs.validators import ge, gt, instance_of

from jointnet import backbones
from jointnet.errors import SpecError, StrategyError
from jointnet.execution.optim import register_provider, train_plan
from jointnet.execution.program import Context, task_context
from jointnet.execution.store import ParamStore
from jointnet.experiments.strategy import (
    TaskRun, add_column, backbone_option, default_backbone, positive_or_none, store_key,
)
from jointnet.experiments.trainer import Hooks
from jointnet.graph import (
    add_head,
    add_task,
    add_task_embedding,
    annotate,
    bind,
    freeze,
    set_context,
    set_grad_rule,
)
from jointnet.graph.layers import ParamInfo
from jointnet.graph.net import JointNet, Param, TensorRef
from jointnet.graph.gates import gate_neighbours as _gate_neighbours
from jointnet.graph.gates import gates_on_route

__all__ = [
    "DEFAULT_GATE_SCALE", "HAT", "PROVIDER", "RECOMMENDED_CONFIG", "HATHooks", "anneal_s",
    "commit_masks", "compensation", "conditioned_params", "conditioning", "cumulative_mask",
    "cumulative_update", "embedding_key", "gate_neighbours", "gated_layers", "gates_on_route",
    "hat_provider", "hat_regulariser", "param_conditioning", "param_factor",
]

#: TrainConfig fields of HAT's original code (SPG spec §8.4); the runner's config decides.
RECOMMENDED_CONFIG: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 64,
    "epochs": 200, "schedule": "plateau", "lr_factor": 3.0, "lr_patience": 5, "min_lr": 1e-4,
}

CUM_MASK = "hat.cum_mask"  # gate annotation: TensorRef to a^{<=t}
NET_KEY = "hat"  # net annotation: {"s_max": float, "tasks": [...]}
PROVIDER = "hat"  # the gradient-rule provider of HAT's conditioning (`hat_provider`)
#: The gate scale of a `Context` nobody set: a task's inference runs at it unless its recorded
#: context says otherwise (HAT records ``gate_scale`` only for another ``s_max``).
DEFAULT_GATE_SCALE: float = attrs.fields(Context).gate_scale.default

# Kinds that continue a trunk block (the gate goes after them) and kinds that start a new one
# (the gate goes before them).
_CONTINUE = {"ReLU", "BatchNorm", "Dropout", "MaxPool2d", "AvgPool2d", "GlobalAvgPool", "Identity"}
_START = {"Conv2d", "Linear", "Flatten"}




def _fail(message: str, task: str | None = None) -> StrategyError:
    """HAT's error for a situation it cannot handle (named after the strategy and the task)."""
    return StrategyError(message, strategy="hat", task=task)


# ---- pure functions -------------------------------------------------------------------------


def gated_layers(layers: list) -> list:
    """`layers` (a declarative backbone list) with a ``{"kind": "Gate"}`` after every trunk block.

    A block starts at a Conv2d or Linear and runs through the ReLU / BatchNorm / Dropout / pooling
    that follow it; its gate goes before the next Conv2d, Linear or Flatten, or at the end. A list
    that already holds a Gate is returned unchanged (the user placed the gates).

    Raises:
        StrategyError: a merge (Add, Concat) or an item with explicit ``inputs``: gates are only
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
            raise _fail(
                f"cannot insert gates into a non-sequential backbone (item {item!r}); "
                "place {'kind': 'Gate'} items yourself and pass insert_gates=False")
        if kind in _START and open_block:
            out.append({"kind": "Gate"})
            open_block = False
        elif kind not in _START and kind not in _CONTINUE and kind != "input" and open_block:
            raise _fail(f"do not know where a block ends at {kind} (item {item!r})")
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
    """``a^{<=t} = max(a^{<=t-1}, sigmoid(s_max e^t))`` (just the gate when there is no old mask).

    >>> cumulative_update(torch.tensor([0.5, 0.0]), torch.tensor([-1.0, 1.0]), 400.0).tolist()
    [0.5, 1.0]
    """
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
            raise _fail(f"the {what} gate has {v.numel()} units, the parameter "
                        f"{info.shape} has {info.shape[axis]} along axis {axis}")
        view = [1] * nd
        view[axis] = -1
        return v.reshape(view)

    a = along(post, info.out_axis, "post")
    if info.in_axis is not None and pre is not None:
        a = torch.minimum(a, along(pre, info.in_axis, "pre"))
    return 1 - a


# ---- graph analysis -------------------------------------------------------------------------


def gate_neighbours(net: JointNet, task: str, node: str) -> tuple[str | None, str | None, int]:
    """(pre gate, post gate, repeat) of the parametric node `node` on `task`'s route
    (`jointnet.graph.gates.gate_neighbours`: the nearest gates through channel-preserving nodes;
    `repeat` input positions per pre-gate unit).

    Raises:
        StrategyError: the walk meets a merge or another parametric layer before a gate.
    """
    try:
        return _gate_neighbours(net, task, node)
    except SpecError as e:
        raise _fail(str(e), task) from None


def conditioned_params(net: JointNet, task: str) -> dict[str, list[str]]:
    """The parameters HAT conditions on `task`'s route: node -> trainable parameter names.

    Every parametric trunk node (heads, gates and the input excepted) with its non-buffer
    parameters, in route order.

    Raises:
        StrategyError: such a node has no gate after it (HAT could not protect it), or holds
            grown channel groups.
    """
    head = net.tasks[task].head
    out: dict[str, list[str]] = {}
    for n in net.route(task):
        node = net.node(n)
        if n == head or node.kind in ("Gate", "Input"):
            continue
        names = [name for name, info in net.effective_spec(task, n).params().items() if not info.buffer]
        if not names:
            continue
        if node.out_groups or node.in_groups:
            raise _fail(f"node {n!r} holds channel groups (widened); not supported", task)
        _, post, _ = gate_neighbours(net, task, n)
        if post is None:
            raise _fail(f"node {n!r} of task {task!r} has parameters but no gate after "
                        "it, so HAT cannot protect them; add a Gate after its block", task)
        out[n] = names
    return out


def cumulative_mask(net: JointNet, store: ParamStore, gate: str) -> torch.Tensor | None:
    """The gate's cumulative mask a^{<=t} from the store (None before the first task is done)."""
    ref = net.node(gate).annotations.get(CUM_MASK)
    return None if ref is None else store[ref.key]


def embedding_key(net: JointNet, task: str, gate: str) -> str:
    """Store key of `task`'s own embedding on `gate`.

    Raises:
        StrategyError: `task` has no embedding of its own there (see `add_task_embedding`).
    """
    p = net.params_for(task, gate)["embedding"][0][0]
    if p.task != task:
        raise _fail(f"task {task!r} has no embedding of its own on gate {gate!r}; "
                    "apply add_task_embedding first", task)
    return p.key


def param_conditioning(net: JointNet, store: ParamStore, task: str, node: str, name: str) -> torch.Tensor | None:
    """HAT's gradient multiplier of parameter `name` of `node` for training `task`.

    ``param_factor`` from the cumulative masks of the node's post and pre gates (a gate without
    a mask counts as all zeros), broadcastable to the tensor. None while no gate of `task`'s
    route has a cumulative mask (the first task): nothing is conditioned.

    Raises:
        StrategyError: the node has no gate after it, or holds channel groups.
    """
    gates = gates_on_route(net, task)
    cums = {g: cumulative_mask(net, store, g) for g in gates}
    if all(c is None for c in cums.values()):
        return None

    def cum(g: str) -> torch.Tensor:
        c = cums[g]
        return torch.zeros(net.node(g).spec.units, device=store.device) if c is None else c.detach()

    rows = net.params_for(task, node)[name]
    if len(rows) != 1 or len(rows[0]) != 1:
        raise _fail(f"node {node!r} holds channel groups (widened); not supported", task)
    pre, post, repeat = gate_neighbours(net, task, node)
    if post is None:
        raise _fail(f"node {node!r} of task {task!r} has parameters but no gate after "
                    "it, so HAT cannot protect them; add a Gate after its block", task)
    a_pre = None if pre is None else cum(pre).repeat_interleave(repeat)
    return param_factor(net.effective_spec(task, node).params()[name], cum(post), a_pre)


def hat_provider(net: JointNet, store: ParamStore, task: str, node: str, param: Param) -> torch.Tensor | None:
    """The ``"hat"`` gradient-rule provider (`jointnet.execution.optim.register_provider`): the
    multiplier `param_conditioning` gives the block `param` of `node` (None: a no-op)."""
    return param_conditioning(net, store, task, node, param.name)


register_provider(PROVIDER, hat_provider)


def conditioning(net: JointNet, store: ParamStore, task: str) -> dict[str, torch.Tensor]:
    """HAT's gradient multipliers for training `task`: store key -> factor (broadcastable).

    What the ``"hat"`` rules give every parameter of `conditioned_params`, by the parameter's
    store key. Empty when no gate has a cumulative mask yet (the first task).
    """
    out: dict[str, torch.Tensor] = {}
    for n, names in conditioned_params(net, task).items():
        grid = net.params_for(task, n)
        for name in names:
            f = param_conditioning(net, store, task, n, name)
            if f is None:
                return {}
            out[grid[name][0][0].key] = f
    return out


def commit_masks(net: JointNet, store: ParamStore, task: str, s_max: float) -> JointNet:
    """The post-task pass: fold `task`'s gates at ``s_max`` into every gate's cumulative mask.

    The new masks go into `store` under new keys (`store_key`, `ParamStore.put`); the returned
    net references them from the gates' ``hat.cum_mask`` annotations and records `task` in the
    net annotation ``hat``. Older versions of the net keep their masks.
    """
    for g in gates_on_route(net, task):
        e = store[embedding_key(net, task, g)]
        new = cumulative_update(cumulative_mask(net, store, g), e, s_max)
        key = store_key(net, g, CUM_MASK)
        store.put(key, new, trainable=False)
        net = annotate(net, node=g, key=CUM_MASK, value=TensorRef(key))
    done = list(net.annotations.get(NET_KEY, {}).get("tasks", ()))
    return annotate(net, key=NET_KEY, value={"s_max": float(s_max), "tasks": done + [task]})


# ---- hooks ----------------------------------------------------------------------------------


class HATHooks(Hooks):
    """Training hooks for one task: annealed s, ``c * R``, compensation, clipping, clamping.

    The gradient conditioning is not here: it is the net's ``"hat"`` gradient rule, which the
    trainer applies before `transform_grads`. The batch's gate scale goes from `context` to the
    later hooks of the same batch through ``info["gate_scale"]``.

    Args:
        store: the run's store (the embeddings are clamped through `ParamStore.update`).
        embeddings: (store key, tensor) of the task's own gate embeddings (trained).
        cums: the cumulative masks a^{<t} of the same gates (zeros for the first task).
        params: every tensor the optimizer trains (clipped together), in the trainer's order.
        train_context / eval_context: the task's contexts in train and eval mode; the hooks
            replace their gate scale.
    """

    def __init__(self, *, store: ParamStore, embeddings, cums, params, train_context: Context,
                 eval_context: Context, s_max=400.0, c=0.75, thres_cosh=50.0, emb_clamp=6.0,
                 clip_grad=10000.0):
        self.store = store
        self.embeddings = list(embeddings)
        self.cums = list(cums)
        self.params = list(params)
        self.train_context = train_context
        self.eval_context = attrs.evolve(eval_context, gate_scale=float(s_max))
        self.s_max = s_max
        self.c = c
        self.thres_cosh = thres_cosh
        self.emb_clamp = emb_clamp
        self.clip_grad = clip_grad

    def context(self, info: dict) -> Context:
        """The annealed ``s`` for a training batch, ``s_max`` for evaluation (stashed in `info`)."""
        if info.get("training"):
            s = anneal_s(info["batch"], info["n_batches"], self.s_max)
            info["gate_scale"] = s
            return attrs.evolve(self.train_context, gate_scale=s)
        info["gate_scale"] = self.s_max
        return self.eval_context

    def extra_loss(self, module, x, y, logits, info: dict):
        if not self.c or not self.embeddings:
            return None
        s = info.get("gate_scale", self.s_max)
        gates = [torch.sigmoid(s * e) for _, e in self.embeddings]
        return self.c * hat_regulariser(gates, self.cums)

    @torch.no_grad()
    def transform_grads(self, module, info: dict) -> None:
        s = info.get("gate_scale", self.s_max)
        for _, e in self.embeddings:
            if e.grad is not None:
                e.grad.mul_(compensation(e, s, self.s_max, self.thres_cosh))
        if self.clip_grad:
            grads = [p.grad for p in self.params if p.grad is not None]
            total = torch.nn.utils.get_total_norm(grads)
            # Scale only when over the limit (the trainer syncs every batch anyway): at 10000 the
            # clip almost never fires, and an unconditional scale by 1.0 costs a pass over weights.
            if float(total) > self.clip_grad:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.clip_grad, total)

    @torch.no_grad()
    def after_step(self, module, info: dict) -> None:
        for key, e in self.embeddings:
            self.store.update(key, e.clamp(-self.emb_clamp, self.emb_clamp))


# ---- the strategy ---------------------------------------------------------------------------






@attrs.frozen
class HAT:
    """HAT (Serra et al., ICML 2018; SPG spec §8.4): per-task hard attention gates on a shared trunk.

    Options (defaults are the paper's code; details in the module docstring): ``backbone`` =
    None (`default_backbone`), ``insert_gates`` = True, ``s_max`` = 400.0, ``c`` = 0.75,
    ``clip_grad`` = 10000.0 (None: off), ``thres_cosh`` = 50.0, ``emb_clamp`` = 6.0,
    ``freeze_old_heads`` = True. The runner starts from `recommended_config` (the paper's
    optimizer and schedule); a run's own config overrides it.

    >>> HAT(s_max=100).s_max, HAT().clip_grad
    (100.0, 10000.0)
    """

    recommended_config: ClassVar[dict[str, Any]] = RECOMMENDED_CONFIG

    backbone: list | None = attrs.field(default=None, validator=backbone_option)
    insert_gates: bool = attrs.field(default=True, validator=instance_of(bool))
    s_max: float = attrs.field(default=400.0, converter=float, validator=gt(0.0))
    c: float = attrs.field(default=0.75, converter=float, validator=ge(0.0))
    clip_grad: float | None = attrs.field(default=10000.0, validator=positive_or_none)
    thres_cosh: float = attrs.field(default=50.0, converter=float, validator=gt(0.0))
    emb_clamp: float = attrs.field(default=6.0, converter=float, validator=gt(0.0))
    freeze_old_heads: bool = attrs.field(default=True, validator=instance_of(bool))

    def layers(self, input_shape) -> list:
        """The backbone the first task builds (gated unless ``insert_gates=False``)."""
        layers = list(self.backbone or default_backbone(input_shape))
        return gated_layers(layers) if self.insert_gates else layers

    def prepare(self, net: JointNet, task: str, n_classes: int, input_shape) -> JointNet:
        """The rewrites for a new task: the gated trunk (first task) or a binding to it, the
        task's embeddings and head, the ``"hat"`` gradient rules (logged once, by the first task:
        they hold for every task) and, for ``s_max != 400``, the task's inference context.

        Raises:
            StrategyError: the backbone has no gates, or a parametric trunk node has no gate
                after it.
        """
        if not net.tasks:
            net = add_column(net, self.layers(input_shape), task, n_classes)
            if not gates_on_route(net, task):
                raise _fail("the backbone has no Gate layers; use insert_gates=True "
                            "or put {'kind': 'Gate'} items after its blocks", task)
        else:
            first = next(iter(net.tasks))
            net = bind(add_task(net, task=task), task=task, to=first)
        for g in gates_on_route(net, task):
            net = add_task_embedding(net, node=g, task=task)
        if net.tasks[task].head is None:
            net = add_head(net, task=task, n_classes=n_classes)
        # One rule per distinct parameter list (a conv without bias, BatchNorm, ...); a rule
        # already there changes nothing, so later tasks log nothing here.
        by_names: dict[tuple[str, ...], list[str]] = {}
        for n, names in conditioned_params(net, task).items():
            by_names.setdefault(tuple(names), []).append(n)
        for names, nodes in by_names.items():
            net = set_grad_rule(net, nodes=nodes, params=list(names), kind="multiply", provider=PROVIDER)
        if self.s_max != DEFAULT_GATE_SCALE:  # default runs keep the older logged rewrites
            net = set_context(net, task=task, values={"gate_scale": self.s_max})
        return net

    def hooks(self, net: JointNet, store: ParamStore, task: str, lr: float) -> HATHooks:
        """`HATHooks` for training `task` of `net` (realized in `store`) at learning rate `lr`."""
        gates = gates_on_route(net, task)
        embeddings = [(k, store[k]) for k in (embedding_key(net, task, g) for g in gates)]
        cums = []
        for g, (_, e) in zip(gates, embeddings):
            c = cumulative_mask(net, store, g)
            cums.append(torch.zeros_like(e.detach()) if c is None else c.detach())
        return HATHooks(store=store, embeddings=embeddings, cums=cums, params=train_plan(net, store, task, lr).params,
                        train_context=task_context(net, task, training=True),
                        eval_context=task_context(net, task), s_max=self.s_max, c=self.c,
                        thres_cosh=self.thres_cosh, emb_clamp=self.emb_clamp, clip_grad=self.clip_grad)

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Add `run.task` (`prepare`), train it under the ``"hat"`` rules and `HATHooks`, fold its
        gates into the cumulative masks (`commit_masks`) and freeze its head."""
        task = run.task
        net = self.prepare(net, task.name, task.n_classes, task.input_shape)
        if run.config.weight_decay > 0 and run.echo is not None:
            run.echo(f"HAT warning: weight_decay={run.config.weight_decay} erodes the weights "
                     "HAT blocks (it is applied after gradient conditioning); use 0")
        run.store.realize(net)
        run.train(net, hooks=self.hooks(net, run.store, task.name, run.config.lr))
        net = commit_masks(net, run.store, task.name, self.s_max)
        if self.freeze_old_heads:
            net = freeze(net, nodes=net.tasks[task.name].head)
        return net
