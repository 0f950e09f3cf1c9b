"""Progressive Neural Networks (Rusu et al., 2016, "Progressive Neural Networks", arXiv:1606.04671).

Every task gets a new *column*: a fresh copy of the backbone. Column k's weight layer l
(Conv2d or Linear, and the head) also reads, through *lateral* connections, what every earlier
column j < k feeds its own layer l, and sums it with its own output before the rest of the layer
(BatchNorm, non-linearity, pooling): paper eq. (1),

    h_l^(k) = f( W_l^(k) h_{l-1}^(k) + sum_{j<k} U_l^(k:j) h_{l-1}^(j) ).

Earlier columns are frozen for the new task, so every finished task computes exactly what it
computed when it was trained (bit-identical on CPU): PNN cannot forget.

As a graph: the new task is added, routed (`route_through`) through the part of the earlier
columns that feeds the lateral sources (those columns' nodes are shared, not copied), and its own
column is built with `add_node`: for every weight layer X, its own node ``X.tK``, one lateral
adapter ``X.tK.lat.tJ`` per earlier column fed by that column's input to X, and an `Add` merge
``X.tK.add`` (own output on port 0, laterals after it) that the rest of the column reads. The
head reads an `Add` of the column's top features and one lateral per earlier column's top
features (``head.tK.lat.tJ`` -> ``head.tK.add`` -> ``head.tK``). Each task's annotation
``pnn.outputs`` maps every backbone layer name to the node that column's successors read, so a
resumed run continues from the snapshot alone.

Options of `PNN` (defaults first); all but the first are choices the paper leaves open:

- ``backbone`` = None: the column, a declarative layer list; None is `default_backbone` of the
  stream's input shape.
- ``adapter`` = ``"linear"``: ``"linear"`` is paper eq. (1): one linear map U^(k:j) per earlier column
  (Linear without bias, or a Conv2d without bias, see ``lateral_conv``). ``"mlp"`` is the
  paper's adapter, eq. (2), ``U sigma(V alpha h)``, in a simplified form: the earlier columns'
  activations are concatenated (Concat), reduced by V (a bias-free Linear, or a 1x1 Conv2d, to
  the width of one column, n_{l-1} as in the paper), passed through ReLU and mapped by U; the
  learned scalar alpha is folded into V (alpha V is again a linear map, so the function class is
  the same; only alpha's small random initialisation, which the paper uses to balance input
  scales, is not reproduced).
- ``lateral_conv`` = ``"same"``: ``"same"`` gives a conv lateral the kernel, stride and padding of the layer
  it feeds, so its output always matches the layer's; ``"1x1"`` uses 1x1 convolutions (the
  paper's choice for its convolutional columns), which needs layers that keep the spatial size
  up to stride (e.g. 3x3 with padding 1).
- ``head_laterals`` = True: True also sends laterals into the output layer (the paper's columns have
  laterals into every layer above the first); False gives every column its own head only.

Fixed choices, documented:

- Laterals into layer l come from the node that column j's own layer l reads (after its
  pooling, flatten or dropout), so conv -> linear transitions need no extra Flatten: the earlier
  column's own Flatten is the source. Layers whose input does not depend on any weight (the
  first layer, after parameter-free ops such as Flatten of the input) get no laterals: they would
  duplicate the column's own input.
- Earlier columns are frozen for the new task (`freeze`, node level): they get no gradient and
  no optimizer state. Their BatchNorm nodes get per-task statistics for the new task
  (`per_task_bn`, copied) and, being frozen, normalise with them and never update them, so
  training task k cannot move the statistics the finished tasks read. Dropout in earlier
  columns stays active while task k trains.
- Training is the trainer's, under the net's policy, with no hooks; the run's `TrainConfig`
  decides optimizer and schedule.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs.validators import in_, instance_of

from jointnet import backbones
from jointnet.errors import RewriteError, StrategyError
from jointnet.experiments.strategy import TaskRun, backbone_option, default_backbone
from jointnet.graph import (
    add_head, add_input, add_node, add_task, annotate, freeze, per_task_bn, route_through,
)
from jointnet.graph.layers import Linear
from jointnet.graph.net import JointNet
from jointnet.graph.shapes import task_shapes

__all__ = ["OUTPUTS", "PNN", "add_progressive_column", "column_items"]

OUTPUTS = "pnn.outputs"  # task annotation: backbone layer name -> node its successors read
_WEIGHTED = ("Conv2d", "Linear")


def _fail(message: str, task: str | None = None) -> StrategyError:
    """PNN's error for a situation it cannot handle (named after the strategy and the task)."""
    return StrategyError(message, strategy="pnn", task=task)


def column_items(layers: list) -> tuple[tuple[int, ...] | None, list[tuple[str, str, Any, list[str]]]]:
    """The backbone as (input shape or None, [(name, kind, spec or fields, input names)]).

    Names follow `jointnet.graph.backbones.build` (``fc1``, ``relu1``, ...; an item's ``name`` wins);
    the net's input is called ``"input"``.

    >>> shape, items = column_items(backbones.mlp(4, [8]))
    >>> shape, [(n, k, i) for n, k, _, i in items]
    ((4,), [('fc1', 'Linear', ['input']), ('relu1', 'ReLU', ['fc1'])])
    """
    items = list(layers)
    shape = None
    if items and isinstance(items[0], dict) and items[0].get("kind") == "input":
        shape = tuple(items.pop(0)["shape"])
    counts: dict[str, int] = {}
    prev = "input"
    out = []
    for item in items:
        kind = backbones._kind(item)
        if isinstance(item, dict):
            fields = dict(item)
            name = fields.pop("name", None)
            inputs = list(fields.pop("inputs", [prev]))
        else:
            fields, name, inputs = item, None, [prev]
        if name is None:
            counts[kind] = counts.get(kind, 0) + 1
            name = f"{backbones._PREFIX.get(kind, kind.lower())}{counts[kind]}"
        out.append((name, kind, fields, inputs))
        prev = name
    return shape, out


def _depends(items) -> dict[str, bool]:
    """Whether each item's output depends on some weight (else it is a fixed function of the input)."""
    dep = {"input": False}
    for name, kind, _, inputs in items:
        dep[name] = kind in _WEIGHTED or any(dep.get(i, False) for i in inputs)
    return dep


def _sources(items, head_laterals: bool) -> list[str]:
    """Backbone names whose output (in every earlier column) feeds a lateral."""
    dep = _depends(items)
    out = []
    for _, kind, _, inputs in items:
        if kind in _WEIGHTED and dep[inputs[0]] and inputs[0] not in out:
            out.append(inputs[0])
    if head_laterals and items and dep[items[-1][0]] and items[-1][0] not in out:
        out.append(items[-1][0])
    return out


def _same_as(spec, lateral_conv: str) -> dict:
    """A bias-free layer like `spec` (Linear or Conv2d) to map a lateral into `spec`'s output."""
    if spec.kind == "Linear":
        return {"kind": "linear", "out_f": spec.out_f, "bias": False}
    if lateral_conv == "1x1":
        return {"kind": "conv", "out_ch": spec.out_ch, "kernel": 1, "stride": spec.stride, "padding": 0, "bias": False}
    return {"kind": "conv", "out_ch": spec.out_ch, "kernel": spec.kernel, "stride": spec.stride,
            "padding": spec.padding, "bias": False}


def _laterals(
    net: JointNet, task: str, own: str, target, srcs: list[tuple[str, str]], opts: PNN, name: str | None = None,
) -> tuple[JointNet, str]:
    """Sum `own`'s output with laterals from `srcs` ((earlier task, node)); returns the merge id.

    `target` is the layer spec whose output the laterals must match (a Linear for the head);
    the new nodes are called ``NAME.lat.*`` and ``NAME.add`` (`name` defaults to `own`).
    """
    name = name or own
    if opts.adapter == "linear":
        terms = [own]
        for j, src in srcs:
            lat = f"{name}.lat.{j}"
            net = add_node(net, node=lat, spec=_same_as(target, opts.lateral_conv), inputs=[src], task=task)
            terms.append(lat)
    else:
        x = srcs[0][1]
        if len(srcs) > 1:
            x = f"{name}.lat.cat"
            net = add_node(net, node=x, spec={"kind": "concat"}, inputs=[s for _, s in srcs], task=task)
        width = task_shapes(net, task)[srcs[0][1]][0]  # one column's width: paper's n_{l-1}
        if target.kind == "Linear":
            v = {"kind": "linear", "out_f": width, "bias": False}
        else:
            v = {"kind": "conv", "out_ch": width, "kernel": 1, "bias": False}
        net = add_node(net, node=f"{name}.lat.v", spec=v, inputs=[x], task=task)
        net = add_node(net, node=f"{name}.lat.relu", spec={"kind": "relu"}, inputs=[f"{name}.lat.v"], task=task)
        net = add_node(net, node=f"{name}.lat.u", spec=_same_as(target, opts.lateral_conv),
                       inputs=[f"{name}.lat.relu"], task=task)
        terms = [own, f"{name}.lat.u"]
    merge = f"{name}.add"
    try:
        net = add_node(net, node=merge, spec={"kind": "add"}, inputs=terms, task=task)
    except RewriteError as e:
        hint = " (try lateral_conv='same')" if opts.lateral_conv == "1x1" else ""
        raise _fail(f"the laterals into {own!r} do not fit its output{hint}: {e}", task) from None
    return net, merge


def add_progressive_column(
    net: JointNet, layers: list, task: str, n_classes: int, opts: PNN | None = None,
) -> JointNet:
    """Add `task` with its own column of `layers`, laterals from every earlier PNN column, a head.

    The earlier tasks must have been added by this function (they carry ``pnn.outputs``). Node
    ids are the backbone names for the first column and ``NAME.TASK`` after it.

    Raises:
        StrategyError: an empty backbone, an earlier task that is not a PNN column, laterals that
            do not fit the layer they feed, or a head on features that are not flat.

    >>> net = add_progressive_column(JointNet.empty(), backbones.mlp(4, [8, 8]), "t1", 2)
    >>> net = add_progressive_column(net, backbones.mlp(4, [8, 8]), "t2", 2)
    >>> net.inputs_of("fc2.t2.add", "t2")
    ['fc2.t2', 'fc2.t2.lat.t1']
    """
    opts = opts or PNN()
    shape, items = column_items(layers)
    if not items:
        raise _fail("the backbone has no layers", task)
    earlier = list(net.tasks)
    for j in earlier:
        if OUTPUTS not in net.tasks[j].annotations:
            raise _fail(f"task {j!r} has no {OUTPUTS!r} annotation; it was not added as a PNN column", task)
    outs_of = {j: dict(net.tasks[j].annotations[OUTPUTS]) for j in earlier}
    if "input" not in net:
        if shape is None:
            raise _fail("the backbone must start with an input item on an empty net", task)
        net = add_input(net, node="input", shape=shape)
    net = add_task(net, task=task)
    srcs = _sources(items, opts.head_laterals)
    if earlier:
        upto = [outs_of[j][s] for j in earlier for s in srcs]
        net = route_through(net, task=task, like=earlier[-1], upto=list(dict.fromkeys(upto)))
    dep = _depends(items)
    outputs = {"input": net.tasks[task].input}
    for name, kind, fields, inputs in items:
        own = f"{name}.{task}" if earlier else name
        net = add_node(net, node=own, spec=fields, inputs=[outputs[i] for i in inputs], task=task)
        outputs[name] = own
        if earlier and kind in _WEIGHTED and dep[inputs[0]]:
            pairs = [(j, outs_of[j][inputs[0]]) for j in earlier]
            net, outputs[name] = _laterals(net, task, own, net.node(own).spec, pairs, opts)
    top = outputs[items[-1][0]]
    if earlier and opts.head_laterals and dep[items[-1][0]]:
        width = task_shapes(net, task)[top]
        if len(width) != 1:
            raise _fail(f"the head needs flat features; {top!r} gives {width}", task)
        pairs = [(j, outs_of[j][items[-1][0]]) for j in earlier]
        net, top = _laterals(net, task, top, Linear(in_f=width[0], out_f=width[0]), pairs, opts, name=f"head.{task}")
    net = add_head(net, task=task, n_classes=n_classes, after=top)
    net = annotate(net, key=OUTPUTS, value={k: v for k, v in outputs.items() if k != "input"}, task=task)
    # Earlier columns: frozen for the new task, their BatchNorm statistics forked (module doc).
    old = [n for n in net.route(task) if net.node(n).params and net.node(n).created_by != task]
    for n in old:
        if net.node(n).kind == "BatchNorm":
            net = per_task_bn(net, node=n, task=task, init="copy")
    if old:
        net = freeze(net, nodes=old, task=task)
    return net




@attrs.frozen
class PNN:
    """Progressive Neural Networks (Rusu et al. 2016): a new column per task, laterals, no forgetting.

    Options (details in the module docstring): ``backbone`` = None (`default_backbone` of the
    stream's input shape), ``adapter`` = ``"linear"`` (paper eq. 1) | ``"mlp"`` (eq. 2 without
    the scalar), ``lateral_conv`` = ``"same"`` | ``"1x1"``, ``head_laterals`` = True.

    >>> PNN().adapter, PNN(head_laterals=False).head_laterals
    ('linear', False)
    """

    backbone: list | None = attrs.field(default=None, validator=backbone_option)
    adapter: str = attrs.field(default="linear", validator=in_(("linear", "mlp")))
    lateral_conv: str = attrs.field(default="same", validator=in_(("same", "1x1")))
    head_laterals: bool = attrs.field(default=True, validator=instance_of(bool))

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Add `run.task`'s column (`add_progressive_column`) and train it; earlier columns are
        frozen for it, so nothing else changes."""
        task = run.task
        layers = self.backbone or default_backbone(task.input_shape)
        net = add_progressive_column(net, layers, task.name, task.n_classes, self)
        run.train(net)
        return net
