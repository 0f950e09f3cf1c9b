"""LASEM's graph side (spec §8): a task's column, its alternatives per slot, configuration views,
the commit, and the ``lasem`` view of ``jointnet inspect``.

**The template** (`Template`, spec §2.7): ``d`` conv layers (stride 1, SAME padding, ReLU, an
optional max-pool after each), then flatten, dropout, task-specific FC layers with ReLU and a
task head. The conv layers are the *slots*, named ``conv1 .. convd``.

**A task's graph.** Task ``t`` gets its own *column*: ``input -> conv1.t -> relu1.t (-> pool1.t)
-> ... -> flatten.t -> drop.t -> fc1.t -> relufc1.t -> head.t`` (`build_column`), where
``convl.t`` is its own plain `Conv2d` (the task-specific ``theta_t``) and the other nodes hold
no shared tensor. At every slot the *shared* node ``convl`` is the transfer-based alternative
(``theta_s``): a `Conv2d` (HPS), a `TFConv2d` (shared core, ``t``'s factors) or a `DFConv2d`
(shared knowledge base, ``t``'s generator tensors); a slot no task uses yet gets one, made by
``add_node(..., route=False)`` (`ensure_shared`). For the EM ``t`` is routed through every
shared node (`share_slots`, ``reroute``), so its per-task generator tensors exist there, and its
own convs wait beside them, used by no route. A configuration is a `RouteView` of ``t``'s route
with some shared nodes swapped for ``t``'s own (`config_view`); the E-step's view of it also
skips the dropout node (`e_view`). No configuration is a task or has a head of its own.

**Commit** (`commit`, spec §2.5, §8.7): ``t`` is rerouted to its own conv at every slot the
chosen mask owns (leaving a shared generator node drops ``t``'s generator tensors there), then
`prune` removes every node no task routes through: ``t``'s own convs at the slots it shares,
and a shared slot no task uses at all (the next task that needs one makes it anew; a shared slot
nobody kept is at its random initialisation anyway, as every task rolled it back). The rollback
of the shared tensors and the freezing are the strategy's (`strategies.lasem`).

Each task's routed subgraph is then one chain from the input to its head with exactly one
alternative per slot, and the users of a shared node are exactly the tasks whose mask shares
that slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from jointnet.graph import add_head, add_input, add_node, add_task, annotate, freeze, prune, reroute
from jointnet.graph.frozen import thaw
from jointnet.graph.net import JointNet, RouteView
from strategies.lasem_core import OWN, SHARE

__all__ = [
    "NET_KEY", "TASK_KEY", "BASES", "Template", "own_node", "build_column", "ensure_shared", "share_slots",
    "route_mask", "config_view", "e_view", "commit", "freeze_task", "template_of", "inspect_view",
]

NET_KEY = "lasem"  # net annotation: the template (base learner, sizes)
TASK_KEY = "lasem"  # task annotation: the committed mask, how it was chosen, prior, posterior history
BASES = ("hps", "tf", "dfcnn")
SHARED_KIND = {"hps": "Conv2d", "tf": "TFConv2d", "dfcnn": "DFConv2d"}


def _ints(value: Any, name: str, *, lo: int = 1) -> tuple[int, ...]:
    if (not isinstance(value, (list, tuple)) or not value
            or any(isinstance(v, bool) or not isinstance(v, int) or v < lo for v in value)):
        raise ValueError(f"'{name}' must be a non-empty list of ints >= {lo} (got {value!r})")
    return tuple(value)


def _opt_ints(value: Any, name: str) -> tuple[int, ...] | None:
    return None if value is None else _ints(value, name)


@attrs.frozen
class Template:
    """The LASEM net: base learner and sizes (spec §2.7). Validated on construction.

    channels: conv widths, lowest first (one slot each); kernel: their square kernel (odd);
    pools: max-pool size after each conv (1: none); fc: task-specific hidden FC widths;
    dropout: drop probability on the flattened conv features; kb_channels / ts_channels
    (DF-CNN): knowledge-base and generator channels per slot (None: ``c // 2`` and ``c``);
    ts_kernel (DF-CNN): the deconvolution filter's side.
    """

    base: str = attrs.field(validator=attrs.validators.in_(BASES))
    channels: tuple[int, ...] = attrs.field(converter=lambda v: _ints(v, "channels"))
    kernel: int = 3
    pools: tuple[int, ...] | None = attrs.field(default=None, converter=lambda v: _opt_ints(v, "pools"))
    fc: tuple[int, ...] = attrs.field(default=(64,), converter=lambda v: tuple(v) if isinstance(v, list) else v)
    dropout: float = 0.5
    kb_channels: tuple[int, ...] | None = attrs.field(default=None, converter=lambda v: _opt_ints(v, "kb_channels"))
    ts_channels: tuple[int, ...] | None = attrs.field(default=None, converter=lambda v: _opt_ints(v, "ts_channels"))
    ts_kernel: int = 3

    def __attrs_post_init__(self) -> None:
        d = self.d
        if isinstance(self.kernel, bool) or not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"'kernel' must be an odd int >= 1 (SAME padding; got {self.kernel!r})")
        if self.pools is not None and len(self.pools) != d:
            raise ValueError(f"'pools' needs one size per conv layer ({d}); got {list(self.pools)}")
        if not isinstance(self.fc, tuple) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.fc):
            raise ValueError(f"'fc' must be a list of ints >= 1 (got {self.fc!r})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"'dropout' must be a number in [0, 1) (got {self.dropout!r})")
        for name in ("kb_channels", "ts_channels"):
            v = getattr(self, name)
            if v is not None and len(v) != d:
                raise ValueError(f"'{name}' needs one size per conv layer ({d}); got {list(v)}")
        if isinstance(self.ts_kernel, bool) or not isinstance(self.ts_kernel, int) or self.ts_kernel < 1 or self.ts_kernel % 2 == 0:
            raise ValueError(f"'ts_kernel' must be an odd int >= 1 (got {self.ts_kernel!r})")

    @property
    def d(self) -> int:
        return len(self.channels)

    @property
    def slots(self) -> list[str]:
        return [f"conv{i + 1}" for i in range(self.d)]

    def pool(self, i: int) -> int:
        return 1 if self.pools is None else self.pools[i]

    def conv_fields(self, i: int) -> dict:
        return {"out_ch": self.channels[i], "kernel": self.kernel, "padding": self.kernel // 2}

    def own_spec(self, i: int) -> dict:
        return {"kind": "conv", **self.conv_fields(i)}

    def shared_spec(self, i: int) -> dict:
        fields = self.conv_fields(i)
        if self.base == "hps":
            return {"kind": "conv", **fields}
        if self.base == "tf":
            return {"kind": "TFConv2d", **fields}
        c = self.channels[i]
        kb = self.kb_channels[i] if self.kb_channels else max(1, c // 2)
        ts = self.ts_channels[i] if self.ts_channels else c
        return {"kind": "DFConv2d", **fields, "kb_ch": kb, "ts_ch": ts, "ts_kernel": self.ts_kernel}

    def plain(self) -> dict:
        """The template as plain data (the net annotation)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(self).items()}


def template_of(net: JointNet) -> Template | None:
    """The template recorded in `net` (None for a net LASEM did not build)."""
    data = net.annotations.get(NET_KEY)
    if data is None:
        return None
    return Template(**thaw(data["template"]))


def own_node(slot: str, task: str) -> str:
    """The id of `task`'s own alternative of `slot`."""
    return f"{slot}.{task}"


def build_column(net: JointNet, t: Template, task: str, n_classes: int,
                 input_shape: Sequence[int]) -> tuple[JointNet, dict[str, str]]:
    """Add `task` with its own column (own convs at every slot) and head; returns the net and,
    per slot, the node feeding it on the column (the input of its alternatives)."""
    if not len(net.graph):
        net = add_input(net, node="input", shape=tuple(input_shape))
        net = annotate(net, key=NET_KEY, value={"template": t.plain()})
    net = add_task(net, task=task)
    prev, feeds = net.tasks[task].input, {}
    for i, slot in enumerate(t.slots):
        feeds[slot] = prev
        items = [(own_node(slot, task), t.own_spec(i)), (f"relu{i + 1}.{task}", {"kind": "relu"})]
        if t.pool(i) > 1:
            items.append((f"pool{i + 1}.{task}", {"kind": "maxpool", "kernel": t.pool(i)}))
        for node, spec in items:
            net = add_node(net, node=node, spec=spec, inputs=[prev], task=task)
            prev = node
    items = [(f"flatten.{task}", {"kind": "flatten"})]
    if t.dropout > 0:
        items.append((f"drop.{task}", {"kind": "dropout", "p": float(t.dropout)}))
    for k, width in enumerate(t.fc):
        items += [(f"fc{k + 1}.{task}", {"kind": "linear", "out_f": width}), (f"relufc{k + 1}.{task}", {"kind": "relu"})]
    for node, spec in items:
        net = add_node(net, node=node, spec=spec, inputs=[prev], task=task)
        prev = node
    return add_head(net, task=task, n_classes=n_classes, after=prev), feeds


def ensure_shared(net: JointNet, t: Template, task: str, feeds: dict[str, str], slots: Sequence[str]) -> JointNet:
    """Make the shared node of each of `slots` that the net lacks (an alternative no task routes
    through yet, fed like `task`'s own conv there).

    Raises:
        ValueError: an existing shared node is of another kind than the template's base learner.
    """
    for slot in slots:
        i = t.slots.index(slot)
        if slot in net:
            kind = net.node(slot).kind
            if kind != SHARED_KIND[t.base]:
                raise ValueError(f"the shared node {slot!r} is a {kind}; base learner {t.base!r} needs a "
                                 f"{SHARED_KIND[t.base]}")
            continue
        net = add_node(net, node=slot, spec=t.shared_spec(i), inputs=[feeds[slot]], task=task, route=False)
    return net


def share_slots(net: JointNet, task: str, slots: Sequence[str]) -> JointNet:
    """Route `task` through the shared node of each of `slots` instead of its own conv."""
    for slot in slots:
        net = reroute(net, task=task, node=own_node(slot, task), to=slot)
    return net


def route_mask(net: JointNet, t: Template, task: str) -> str:
    """The mask `task`'s route realises: ``T`` where it goes through the shared node.

    Raises:
        ValueError: the route goes through neither alternative of a slot.
    """
    route = set(net.route(task))
    out = []
    for slot in t.slots:
        if slot in route:
            out.append(SHARE)
        elif own_node(slot, task) in route:
            out.append(OWN)
        else:
            raise ValueError(f"task {task!r} routes through neither {slot!r} nor {own_node(slot, task)!r}")
    return "".join(out)


def config_view(net: JointNet, t: Template, task: str, mask: str, name: str | None = None) -> RouteView:
    """Configuration `mask` of `task` as a view of its route: at every slot the shared node (T)
    or the task's own conv (F), whichever its route uses now."""
    current = route_mask(net, t, task)
    swap = {}
    for slot, have, want in zip(t.slots, current, mask):
        if have != want:
            swap[slot if have == SHARE else own_node(slot, task)] = own_node(slot, task) if want == OWN else slot
    return net.view(task, swap=swap, name=name or f"m:{mask}")


def e_view(net: JointNet, view: RouteView, name: str) -> RouteView:
    """`view` with every Dropout node skipped (the E-step runs without dropout, spec §2.3): each
    ``u -> drop -> v`` becomes ``u -> v``. Up to the first dropout it computes exactly what
    `view` computes, so in one multi-route call they share that prefix."""
    drops = {n for n in net.route(view) if net.node(n).kind == "Dropout"}
    if not drops:
        return attrs.evolve(view, name=name)
    into = {v: (u, p) for u, v, p in view.edges if v in drops}
    edges = []
    for u, v, p in view.edges:
        if v in drops:
            continue
        while u in drops:  # follow a chain of dropouts back to what feeds it
            u = into[u][0]
        edges.append((u, v, p))
    return RouteView(task=view.task, edges=tuple(edges), output=view.output, name=name)


def commit(net: JointNet, t: Template, task: str, mask: str, *, delete: bool = True) -> JointNet:
    """Route `task` along configuration `mask` (its own conv where the mask says F); with
    `delete`, prune every node no task routes through (its unused own convs, and generators
    are dropped by the reroute). The shared tensors are the caller's to roll back first."""
    current = route_mask(net, t, task)
    for slot, have, want in zip(t.slots, current, mask):
        if have == want:
            continue
        own = own_node(slot, task)
        if own not in net:
            raise ValueError(f"task {task!r} has no own conv {own!r} to commit slot {slot!r} to")
        net = reroute(net, task=task, node=slot, to=own) if want == OWN else reroute(net, task=task, node=own, to=slot)
    return prune(net) if delete else net


def freeze_task(net: JointNet, t: Template, task: str) -> JointNet:
    """Freeze `task`'s own tensors for every task (its own convs, FC layers and head) and its
    generator tensors on the shared nodes it uses (for itself; spec §2.5)."""
    route = net.route(task)
    shared = [s for s in t.slots if s in route]
    own = [n for n in route if n not in shared and net.node(n).params]
    net = freeze(net, nodes=own, task=None)
    per_task = sorted({name for s in shared for name, info in net.node(s).spec.params().items() if info.per_task})
    if shared and per_task:
        net = freeze(net, nodes=shared, task=task, params=per_task)
    return net


def inspect_view(net: JointNet, store=None) -> dict | None:
    """``jointnet inspect``'s ``lasem`` block: the base learner, one line per task with its mask
    (T = shared, F = own, lowest conv first) and how it was chosen, and one line per slot with
    the tasks that share it. None for a net LASEM did not build.

    >>> t = Template(base="hps", channels=[4], pools=[1], fc=[])
    >>> net, feeds = build_column(JointNet.empty(), t, "t1", 2, (1, 4, 4))
    >>> inspect_view(net)["task t1"], inspect_view(net)["conv1 shared by"]
    ('F', '(no shared node now)')
    """
    t = template_of(net)
    if t is None:
        return None
    out: dict[str, Any] = {
        "base learner": t.base,
        "slots": f"{' '.join(t.slots)} (mask letters: T shared, F own, lowest first)",
    }
    for name, info in net.tasks.items():
        ann = info.annotations.get(TASK_KEY) or {}
        try:
            mask = route_mask(net, t, name)
        except ValueError:
            mask = "?"
        details = [ann["how"]] if "how" in ann else []
        if ann.get("static"):
            details[-1] += f" {ann['static']}"
        if ann.get("prior") is not None:
            details.append(f"prior max {max(ann['prior']):.3f}")
        if "settle" in ann:  # the `settle` option: after which batch the EM stopped
            details.append(f"settled after batch {ann['settled']}" if ann.get("settled") is not None
                           else f"never settled (settle={ann['settle']})")
        if ann.get("val_acc") is not None:
            details.append(f"val acc {ann['val_acc']:.3f}")
        out[f"task {name}"] = mask + (f" ({', '.join(details)})" if details else "")
    for s in t.slots:
        users = sorted(net.users(s), key=net.task_order) if s in net else None
        out[f"{s} shared by"] = "(no shared node now)" if users is None else (", ".join(users) or "-")
    return out
