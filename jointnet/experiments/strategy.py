"""Strategies: the protocol, the registry and the helpers several methods share.

A strategy is a frozen attrs config with one method::

    def step(self, net: JointNet, run: TaskRun) -> JointNet

called once per task of a stream: it rewrites the net for the new task, trains it through
``run.train``, runs its post-task passes, and returns the new net. No base class: pure decision
functions do the thinking (tested on their own), `step` is the imperative shell. All state a
strategy needs later lives in the net (annotations, policy, inference context) and the store
(tensors referenced from the net), never on the strategy object, so a run resumed from a
snapshot continues exactly. Optional class attribute: ``recommended_config`` (the `TrainConfig`
fields of the method's paper, applied under a run's own config).

Registration: the ``jointnet.strategies`` entry-point group (the built-in ones, in pyproject) or
`register` for a strategy defined in a script; the core never imports the `strategies` package.
`get(name, **options)` builds one, turning bad options into a one-line `StrategyError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

import attrs
import torch

from jointnet.errors import JointNetError, StrategyError
from jointnet.execution.compile import compile_net
from jointnet.execution.store import ParamStore
from jointnet.experiments.trainer import Hooks, TrainConfig, TrainResult, accuracy, train_task
from jointnet.graph import backbones
from jointnet.graph.net import JointNet
from jointnet.graph.structure import add_head, add_node, add_task, bind

__all__ = [
    "Strategy", "TaskRun", "register", "get", "strategies", "strategy_names", "options_of", "train_config", "default_backbone",
    "add_column", "trunk_task", "per_task", "teacher_store", "scratch_net", "store_key",
    "backbone_option", "positive_or_none", "count_or_none",
]

ENTRY_POINTS = "jointnet.strategies"
_REGISTERED: dict[str, type] = {}


class Strategy(Protocol):
    """What the runner calls: ``step(net, run) -> net`` for every task, in order."""

    name: str

    def step(self, net: JointNet, run: "TaskRun") -> JointNet: ...


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a strategy available as `name` (``jointnet run --strategy name``)."""

    def deco(cls: type) -> type:
        cls.name = name
        _REGISTERED[name] = cls
        return cls

    return deco


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def _load(name: str, ep: Any) -> type:
    try:
        cls = ep.load()
    except Exception as e:  # a plugin that does not import
        raise StrategyError(f"cannot load {ep.value}: {type(e).__name__}: {e}", strategy=name) from e
    cls.name = name
    return cls


def strategy_names() -> list[str]:
    """The names of every known strategy, without importing any."""
    return sorted(set(_entry_points()) | set(_REGISTERED))


def strategies() -> dict[str, type]:
    """Every known strategy by name: entry points (loaded now) and `register`ed ones."""
    out = {name: _load(name, ep) for name, ep in _entry_points().items() if name not in _REGISTERED}
    out.update(_REGISTERED)
    return dict(sorted(out.items()))


def options_of(cls: type) -> dict[str, attrs.Attribute]:
    """The options of strategy class `cls` (its attrs fields) by name."""
    return {a.name: a for a in attrs.fields(cls)}


def train_config(strategy: Any, **fields: Any) -> TrainConfig:
    """The `TrainConfig` a run of `strategy` trains with: the strategy's ``recommended_config``
    (its paper's settings) under the run's own `fields`."""
    return TrainConfig(**{**getattr(type(strategy), "recommended_config", {}), **fields})


def get(name: str, **options: Any) -> Any:
    """The registered strategy `name` configured with `options`.

    Raises:
        StrategyError: unknown name or option (with the closest known ones), or a bad value.
    """
    if name in _REGISTERED:
        cls = _REGISTERED[name]
    else:
        eps = _entry_points()
        if name not in eps:
            known = strategy_names()
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise StrategyError(f"no strategy {name!r}{hint} Known: {', '.join(known)}", strategy=name)
        cls = _load(name, eps[name])
    fields = options_of(cls)
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise StrategyError(f"unknown option {key!r}{hint} Options: {', '.join(fields)}", strategy=name)
    try:
        return cls(**options)
    except StrategyError:
        raise
    except (TypeError, ValueError) as e:  # a validator's or converter's complaint
        raise StrategyError(_bad_options(cls, options, e), strategy=name) from None


def _reason(e: Exception) -> str:
    # attrs validators raise TypeError(message, attribute, expected, value): the message is the first
    return e.args[0] if e.args and isinstance(e.args[0], str) else str(e)


def _bad_options(cls: type, options: dict[str, Any], error: Exception) -> str:
    """One line naming the option `cls` refused and why (each option is tried alone to find it,
    since a converter's complaint does not name its field)."""
    for key, value in options.items():
        try:
            cls(**{key: value})
        except (TypeError, ValueError) as e:
            return f"bad options: {key}={value!r:.60}: {_reason(e)}"
        except Exception:  # noqa: BLE001 - another option's absence; keep looking
            continue
    return f"bad options: {_reason(error)}"


@attrs.define
class TaskRun:
    """The imperative shell a strategy's `step` works through, for one task of a stream.

    Attributes:
        task: the stream's task (name, classes, train / val / test data).
        index: its position in the stream (0-based).
        stream: the whole stream (earlier tasks' data, for evaluations and replays).
        store: the run's `ParamStore`.
        config: the train config of the run (the strategy's recommended config under it).
        seed: the run's seed.
        strategy: the strategy's name (errors name it).
        echo: where progress lines go.
    """

    task: Any
    index: int
    stream: Any
    store: ParamStore
    config: TrainConfig
    seed: int = 0
    strategy: str = "?"
    echo: Callable[[str], Any] | None = print
    results: list = attrs.field(factory=list)  # the TrainResult of every `train` call

    def error(self, message: str) -> StrategyError:
        """A `StrategyError` naming the strategy and this task."""
        return StrategyError(message, strategy=self.strategy, task=self.task.name)

    def train(self, net: JointNet, *, hooks: Hooks | None = None, config: TrainConfig | None = None,
              say: str | None = None) -> TrainResult:
        """Realize `net`'s tensors and train this task under its train policy and `hooks`."""
        self.store.realize(net)
        echo = self.echo
        if echo is not None and say:
            echo = (lambda msg, _e=echo: _e(f"{say}: {msg}"))
        result = train_task(net, self.store, self.task.name, self.task.train, self.task.val,
                            config or self.config, hooks, task_index=self.index, echo=echo)
        self.results.append(result)
        return result

    def accuracy(self, net: JointNet, task: Any, split: str = "val") -> float:
        """Accuracy of stream task `task` (a stream `Task`) on its `split`, with its inference
        context (NaN for an empty split)."""
        x, y = getattr(task, split)
        self.store.realize(net)
        m = compile_net(net, self.store, task.name)
        return accuracy(m, x, y, self.config.eval_batch_size, self.config.device)


# ---- option validators several methods share ---------------------------------------------------------


def backbone_option(_inst, a: attrs.Attribute, value: Any) -> None:
    """attrs validator: None (the stream's default backbone) or a declarative layer list."""
    if value is not None and not isinstance(value, (list, tuple)):
        raise TypeError(f"'{a.name}' must be None or a list of layers (got {value!r:.60})")


def positive_or_none(_inst, a: attrs.Attribute, value: Any) -> None:
    """attrs validator: None or a number > 0 (not a bool)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ValueError(f"'{a.name}' must be None or a number > 0 (got {value!r})")


def count_or_none(minimum: int = 0):
    """attrs validator factory: None or an int >= `minimum` (not a bool)."""

    def check(_inst, a: attrs.Attribute, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ValueError(f"'{a.name}' must be None or an int >= {minimum} (got {value!r})")

    return check


# ---- helpers several methods share ---------------------------------------------------------------


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


def trunk_task(net: JointNet, layers: list, task: str, n_classes: int) -> JointNet:
    """One shared trunk: the first task builds `layers`; a later one binds to the first task's
    route and gets its own head."""
    if not net.tasks:
        return add_column(net, layers, task, n_classes)
    first = next(iter(net.tasks))
    net = bind(add_task(net, task=task), task=task, to=first)
    return add_head(net, task=task, n_classes=n_classes)


def per_task(value: Any, index: int, *, offset: int = 0) -> Any:
    """A per-task option: `value` itself, or its entry for task `index` (0-based, shifted by
    `offset`) when it is a list, the last entry repeating.

    >>> per_task([0.5, 0.75], 0), per_task([0.5, 0.75], 5), per_task(0.3, 2)
    (0.5, 0.75, 0.3)
    """
    if isinstance(value, (list, tuple)):
        if not value:
            raise JointNetError("a per-task option list must not be empty")
        return value[min(max(index - offset, 0), len(value) - 1)]
    return value


def teacher_store(net: JointNet, store: ParamStore, tasks: Sequence[str]) -> ParamStore:
    """A new store with detached copies of every tensor `tasks` use in `net`: a frozen teacher
    for distillation (LwF, PAR) that training the student cannot move."""
    out = ParamStore(seed=store.seed, device=store.device)
    copies = {}
    for t in tasks:
        for n in net.route(t):
            node = net.node(n)
            for key in [p.key for p in node.params] + [m.key for m in node.masks]:
                if key not in copies and key in store:
                    copies[key] = store[key].detach().clone()
    return out.load(copies)


def scratch_net(layers: list, task: Any, *, seed: int, device: str = "cpu") -> tuple[JointNet, ParamStore]:
    """A fresh, independent net of `layers` for stream task `task` in its own store (L2BG's
    independent nets, reference runs): nothing in it shares a tensor with the run."""
    net = backbones.build(layers, task=task.name, n_classes=task.n_classes)
    return net, ParamStore(seed=seed, device=device).realize(net)


def store_key(net: JointNet, node: str | None, purpose: str, task: str | None = None) -> str:
    """The one key scheme for strategy data put in the store: ``NODE.PURPOSE[.TASK]@LINEAGE``.

    The lineage makes keys of different versions (and branches) of a net distinct, so older
    versions keep their data.

    >>> store_key(JointNet.empty(), "gate1", "hat.cum_mask")
    'gate1.hat.cum_mask@root'
    """
    parts = [p for p in (node, purpose, task) if p]
    return ".".join(parts) + f"@{net.lineage}"


@torch.no_grad()
def logits_of(net: JointNet, store: ParamStore, tasks: Sequence[str], x: torch.Tensor,
              batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Eval-mode logits of `tasks` on `x` in one shared pass (batched; on CPU)."""
    m = compile_net(net, store, list(tasks))
    was = m.training
    m.eval()
    out: dict[str, list] = {t: [] for t in tasks}
    for i in range(0, len(x), batch_size):
        res = m(x[i : i + batch_size].to(store.device))
        for t in tasks:
            out[t].append(res[t].float().cpu())
    m.train(was)
    return {t: torch.cat(v) if v else torch.empty(0) for t, v in out.items()}
