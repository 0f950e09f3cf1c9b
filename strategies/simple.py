"""Baselines with no regularisation: fine-tuning, independent nets, frozen trunk."""

from __future__ import annotations

import attrs

from jointnet.graph import add_head, add_task, bind, freeze
from strategies.base import RunState, Strategy, add_column, default_backbone, register

__all__ = ["FineTune", "Independent", "FrozenTrunk"]


def _trunk_task(state: RunState, task, index: int, backbone) -> None:
    """First task: build the backbone; later tasks: bind to the first task, own head."""
    layers = backbone or default_backbone(task.input_shape)
    if index == 0:
        state.net = add_column(state.net, layers, task.name, task.n_classes)
        return
    first = next(iter(state.net.tasks))
    net = add_task(state.net, task=task.name)
    net = bind(net, task=task.name, to=first)
    state.net = add_head(net, task=task.name, n_classes=task.n_classes)


@register("finetune")
@attrs.define
class FineTune(Strategy):
    """Fine-tuning: one shared trunk trained on every task in turn, a head per task.

    The lower bound of task-incremental learning: old heads stay, the trunk drifts (forgets).
    """

    backbone: list | None = None

    def before_task(self, state, task, index):
        _trunk_task(state, task, index, self.backbone)


@register("independent")
@attrs.define
class Independent(Strategy):
    """Independent nets: every task gets a fresh copy of the backbone (no sharing, no forgetting)."""

    backbone: list | None = None

    def before_task(self, state, task, index):
        layers = self.backbone or default_backbone(task.input_shape)
        state.net = add_column(state.net, layers, task.name, task.n_classes)


@register("frozen")
@attrs.define
class FrozenTrunk(Strategy):
    """Frozen trunk: the trunk trains on the first task only; later tasks train their head."""

    backbone: list | None = None

    def before_task(self, state, task, index):
        _trunk_task(state, task, index, self.backbone)
        if index:
            trunk = [n for n in state.net.route(task.name) if state.net.node(n).params
                     and n != state.net.tasks[task.name].head]
            state.net = freeze(state.net, nodes=trunk, task=task.name)
