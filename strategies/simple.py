"""Baselines with no regularisation: fine-tuning, independent nets, frozen trunk."""

from __future__ import annotations

import attrs

from jointnet.experiments.strategy import TaskRun, add_column, default_backbone, trunk_task
from jointnet.graph import freeze
from jointnet.graph.net import JointNet

__all__ = ["FineTune", "Independent", "FrozenTrunk"]


@attrs.frozen
class FineTune:
    """Fine-tuning: one shared trunk trained on every task in turn, a head per task.

    The lower bound of task-incremental learning: old heads stay, the trunk drifts (forgets).

    Options: ``backbone`` (a declarative layer list; default: `default_backbone` of the stream's
    inputs).
    """

    backbone: list | None = None

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        task = run.task
        net = trunk_task(net, self.backbone or default_backbone(task.input_shape), task.name, task.n_classes)
        run.train(net)
        return net


@attrs.frozen
class Independent:
    """Independent nets: every task gets a fresh copy of the backbone (no sharing, no forgetting).

    Options: ``backbone`` (default: `default_backbone`).
    """

    backbone: list | None = None

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        task = run.task
        net = add_column(net, self.backbone or default_backbone(task.input_shape), task.name, task.n_classes)
        run.train(net)
        return net


@attrs.frozen
class FrozenTrunk:
    """Frozen trunk: the trunk trains on the first task only; later tasks train their head.

    Options: ``backbone`` (default: `default_backbone`).
    """

    backbone: list | None = None

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        task = run.task
        first = not net.tasks
        net = trunk_task(net, self.backbone or default_backbone(task.input_shape), task.name, task.n_classes)
        if not first:
            head = net.tasks[task.name].head
            trunk = [n for n in net.route(task.name) if net.node(n).params and n != head]
            net = freeze(net, nodes=trunk, task=task.name)
        run.train(net)
        return net
