"""The strategy protocol and registry.

A strategy is a frozen config plus four steps the runner calls for every task of a stream:

- ``before_task(state, task, index)``: rewrite ``state.net`` for the new task (add it, route it,
  add its head, set its train policy);
- ``hooks(state, task, index)``: the trainer `Hooks` (extra loss, gradient transform, ...);
- ``train_task(state, task, index)``: train it (default: `jointnet.experiments.trainer.train_task`);
- ``after_task(state, task, index)``: post-task passes (importance, pruning, masks, freezing).

All state a strategy needs later lives in the net (annotations, policy) and the store (tensors
referenced by `TensorRef` annotations), never on the strategy object, so a run resumed from a
snapshot continues exactly. ``eval_hooks(state, task)`` may set up inference (e.g. HAT's gates).

Register a strategy with `@register("name")`; `get("name", **options)` builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from jointnet import backbones
from jointnet.errors import JointNetError
from jointnet.graph.net import JointNet
from jointnet.execution.store import ParamStore
from jointnet.graph import add_head, add_node, add_task
from jointnet.experiments.trainer import Hooks, TrainConfig, TrainResult, train_task

__all__ = ["RunState", "Strategy", "register", "get", "STRATEGIES", "add_column", "default_backbone"]

STRATEGIES: dict[str, type] = {}


@attrs.define
class RunState:
    """What the runner hands to a strategy: the current net and store, the stream, the config."""

    net: JointNet
    store: ParamStore
    stream: Any
    config: TrainConfig
    seed: int = 0
    echo: Callable[[str], Any] = print


def register(name: str):
    """Class decorator: make a strategy available to `jointnet run --strategy name`."""

    def deco(cls):
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return deco


def get(name: str, **options: Any) -> "Strategy":
    """The registered strategy `name`, configured with `options`."""
    import strategies  # noqa: F401  (registers the built-in strategies)

    if name not in STRATEGIES:
        raise JointNetError(f"no strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    try:
        return STRATEGIES[name](**options)
    except (TypeError, ValueError) as e:  # unknown option / a validator's complaint
        raise JointNetError(f"bad options for strategy {name!r}: {e}") from None


def default_backbone(input_shape: tuple[int, ...]) -> list:
    """A small net for the stream's inputs: an MLP for 28x28 or flat inputs, a small conv net else."""
    shape = tuple(input_shape)
    if len(shape) == 1:
        return backbones.mlp(shape[0], (256, 256))
    if shape[0] == 1 and len(shape) == 3:
        return [{"kind": "input", "shape": shape}, {"kind": "flatten"}] + backbones.mlp(
            shape[1] * shape[2], (256, 256))[1:]
    return backbones.small_conv(shape, widths=(32, 64), hidden=256)


def add_column(net: JointNet, layers: list, task: str, n_classes: int) -> JointNet:
    """Give `task` its own fresh copy of `layers` from the net's input (an independent column).

    On an empty net this is `backbones.build`. Node names get a ``.{task}`` suffix after the
    first column.
    """
    if not len(net.graph):
        return backbones.build(layers, task=task, n_classes=n_classes)
    items = [dict(i) if isinstance(i, dict) else i for i in layers]
    if items and isinstance(items[0], dict) and items[0].get("kind") == "input":
        items.pop(0)
    net = add_task(net, task=task)
    prev = net.tasks[task].input
    counts: dict[str, int] = {}
    names: dict[str, str] = {}
    for item in items:
        fields = dict(item)
        kind = backbones._kind(fields)
        name = fields.pop("name", None)
        inputs = [names.get(i, i) for i in fields.pop("inputs", [prev])]
        if name is None:
            counts[kind] = counts.get(kind, 0) + 1
            name = f"{backbones._PREFIX.get(kind, kind.lower())}{counts[kind]}"
        unique = f"{name}.{task}"
        names[name] = unique
        net = add_node(net, node=unique, spec=fields, inputs=inputs, task=task)
        prev = unique
    return add_head(net, task=task, n_classes=n_classes, after=prev)


class Strategy:
    """Base class with the default steps; subclasses are attrs classes holding their options."""

    name: ClassVar[str] = "?"
    # TrainConfig fields the method's paper uses; the runner applies them under a run's config.
    recommended_config: ClassVar[dict[str, Any]] = {}

    def before_task(self, state: RunState, task, index: int) -> None:
        raise NotImplementedError

    def hooks(self, state: RunState, task, index: int) -> Hooks:
        return Hooks()

    def eval_hooks(self, state: RunState, task_name: str) -> Hooks | None:
        return None

    def train_task(self, state: RunState, task, index: int) -> TrainResult:
        return train_task(
            state.net, state.store, task.name, task.train, task.val, state.config,
            self.hooks(state, task, index), task_index=index, echo=state.echo,
        )

    def after_task(self, state: RunState, task, index: int) -> None:
        return None
